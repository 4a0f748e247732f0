// Runs Xen Orchestra's own sync-hook client code, unchanged, from its published npm
// package (@xen-orchestra/xapi, pinned in package.json): Vm.prototype.snapshot,
// .checkpoint and ._httpHook from vm.mjs, with a stub `this` that answers the XAPI
// side (the VM record, its guest metrics, VM.snapshot / VM.checkpoint). Nothing of
// XO's HTTP path is modelled: the requests leave through XO's own code and Node's
// global fetch, which this driver only wraps to record when each request was sent,
// answered or aborted.
//
//   node driver.mjs NODE_MODULES_DIR CONFIG_JSON
//
// CONFIG_JSON (all optional):
//   call             "snapshot" (default), "checkpoint", or "httpHook"
//   pathname         for call=httpHook: "/sync" or "/post-sync"
//   uuid, power_state ("Running"), name_label
//   tags             the VM's tags, e.g. ["xo:notify-on-snapshot=https://[::1]:1727/?vm=U"]
//   networks         the VM guest metrics' networks map, e.g. {"0/ip": "127.0.0.1"}
//   syncHookTimeout  ms, as in xo-server's [xapiOptions] (XO's default when absent: 60000)
//   syncHookSecret   as in xo-server's [xapiOptions]
//   xapiCall         the stub VM.snapshot / VM.checkpoint: {"seconds": T} takes T s,
//                    {"fail": "CODE"} throws an XAPI-like error with that code,
//                    {"waitStdin": true} waits for a line on stdin before answering
//                    (the test inspects the guest while XO's snapshot call runs)
//   offline          true: record each request XO's code makes, then fail it as a
//                    refused connection would, without sending it (for tests of the URL
//                    XO builds, which must not reach whatever listens there)
//
// Prints one JSON object per line on stdout: {"event", "t" (s since start, monotonic),
// "wall" (Unix time, s), ...}. Events: start; request-sent {path, url, headers};
// request-answered {path, status, body}; request-failed {path, error, name};
// xapi-call {method}; xapi-call-done {method, ok}; done {ok, result | error}.
// The process ends once XO's detached /post-sync request has settled too.
import { pathToFileURL } from 'node:url'
import { join } from 'node:path'
import { createInterface } from 'node:readline'

const [modulesDir, configJson = '{}'] = process.argv.slice(2)
const config = JSON.parse(configJson)
const started = performance.now()

function emit(event, fields = {}) {
  const t = (performance.now() - started) / 1000
  process.stdout.write(JSON.stringify({ event, t, wall: Date.now() / 1000, ...fields }) + '\n')
}

// Wrap (not replace) the global fetch that vm.mjs calls, to time XO's requests.
const pending = new Set()
const realFetch = globalThis.fetch
globalThis.fetch = function (url, options = {}) {
  const path = new URL(url).pathname
  emit('request-sent', { path, url: String(url), headers: options.headers ?? {} })
  const request = (async () => {
    try {
      if (config.offline) {
        throw new TypeError('fetch failed', { cause: new Error('offline: not sent') })
      }
      const response = await realFetch(url, options)
      // vm.mjs discards the body; a clone lets the test see the guest's reason.
      const body = await response.clone().text().catch(() => null)
      emit('request-answered', { path, status: response.status, body })
      return response
    } catch (error) {
      emit('request-failed', { path, error: String(error?.cause ?? error), name: error?.name })
      throw error
    }
  })()
  const settled = request.catch(() => {})
  pending.add(settled)
  settled.then(() => pending.delete(settled))
  return request
}

let stdinLines
function nextStdinLine() {
  stdinLines ??= createInterface({ input: process.stdin })[Symbol.asyncIterator]()
  return stdinLines.next()
}

async function xapiCall(method) {
  const behaviour = config.xapiCall ?? {}
  emit('xapi-call', { method })
  try {
    if (behaviour.waitStdin) {
      await nextStdinLine()
    }
    if (behaviour.seconds) {
      await new Promise(resolve => setTimeout(resolve, behaviour.seconds * 1000))
    }
    if (behaviour.fail) {
      const error = new Error(behaviour.fail)
      error.code = behaviour.fail
      throw error
    }
    emit('xapi-call-done', { method, ok: true })
    return 'OpaqueRef:snapshot'
  } catch (error) {
    emit('xapi-call-done', { method, ok: false, error: error.message })
    throw error
  }
}

const { default: Vm } = await import(
  pathToFileURL(join(modulesDir, '@xen-orchestra', 'xapi', 'vm.mjs')).href
)

const vmRecord = {
  $ref: 'OpaqueRef:vm',
  uuid: config.uuid ?? '00000000-0000-4000-8000-000000000001',
  name_label: config.name_label ?? 'guest',
  power_state: config.power_state ?? 'Running',
  tags: config.tags ?? ['xo:notify-on-snapshot'],
  guest_metrics: 'OpaqueRef:guest-metrics',
  VBDs: [],
}

// The stub `this`: XO's Vm methods on an object that answers the XAPI calls they make.
// The two fields are set as the Xapi constructor (index.mjs) sets them from its options.
const xapi = Object.create(Vm.prototype)
Object.assign(xapi, {
  _syncHookSecret: config.syncHookSecret,
  _syncHookTimeout: config.syncHookTimeout,
  async getRecord(type, ref) {
    if (type === 'VM') return vmRecord
    if (type === 'VM_guest_metrics') return { $ref: ref, networks: config.networks }
    throw new Error(`stub XAPI: no ${type} record`)
  },
  async getField(type, ref, field) {
    return (await this.getRecord(type, ref))[field]
  },
  async callAsync(_cancelToken, method) {
    return xapiCall(method)
  },
  async setField() {},
})

emit('start', { call: config.call ?? 'snapshot' })
let outcome
try {
  let result
  if (config.call === 'httpHook') {
    result = await xapi._httpHook(vmRecord, config.pathname ?? '/sync')
  } else if (config.call === 'checkpoint') {
    result = await xapi.checkpoint(vmRecord.$ref)
  } else {
    result = await xapi.snapshot(vmRecord.$ref)
  }
  outcome = { ok: true, result: result ?? null }
} catch (error) {
  outcome = { ok: false, error: error.message }
}
// vm.mjs starts /post-sync detached: let it reach fetch, then wait for it to settle.
await new Promise(resolve => setTimeout(resolve, 10))
while (pending.size) {
  await Promise.all([...pending])
}
emit('done', outcome)
stdinLines?.return?.()
process.exit(0)
