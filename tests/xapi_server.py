"""A XenAPI XML-RPC server for tests: the calls the dom0 companion makes, with XAPI's
wire format ({"Status": "Success", "Value": ...} / {"Status": "Failure",
"ErrorDescription": [code, params...]}) and its real error codes.

The real `XenAPI` client library talks to it over HTTP on 127.0.0.1. The VM's disks
are image files: `VM.snapshot` copies them (sparse), after `before_snapshot()` (the
tests probe the guest's freeze there). `host.call_plugin` runs the plugin script as
XAPI does: `<script> <XML-RPC call (session, args) named fn>`, the response on stdout.
64-bit numbers travel as strings, as XAPI sends them.
"""
import inspect
import os
import subprocess
import sys
import threading
import time
import uuid
import xmlrpc.client
from socketserver import ThreadingMixIn
from xmlrpc.server import SimpleXMLRPCServer

NULL = "OpaqueRef:NULL"
CLASSES = ("VM", "VBD", "VDI", "host", "session")


class ApiError(Exception):
    def __init__(self, *description):
        Exception.__init__(self, description)
        self.description = [str(item) for item in description]


def new_ref():
    return "OpaqueRef:" + str(uuid.uuid4())


class _Server(ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True


class FakeXapi(object):
    """One pool: this host, another host, their VMs; `calls` records every method."""

    def __init__(self):
        self.lock = threading.RLock()
        self.db = {cls: {} for cls in CLASSES}
        self.calls = []
        self.images = {}          # VDI ref -> image path
        self.before_snapshot = None
        self.snapshot_error = None  # an ErrorDescription VM.snapshot answers with
        self.plugin = None        # (script path, environment) for host.call_plugin
        self.plugins = {}         # host ref -> (script path, environment), else .plugin
        self.host = self.add("host", name_label="this-host", address="127.0.0.1")
        self.other_host = self.add("host", name_label="other-host", address="127.0.0.2")
        self.add_vm("Control domain on host: this-host", is_control_domain=True, domid="0")
        self.server = None
        self.caller = threading.local()  # .session: the session of the call in this thread

    # -- the data -----------------------------------------------------------------

    def add(self, cls, **fields):
        ref = new_ref()
        fields.setdefault("uuid", str(uuid.uuid4()))
        self.db[cls][ref] = fields
        return ref

    def add_vm(self, name, power_state="Running", resident_on=None, domid="7", **fields):
        record = dict(name_label=name, power_state=power_state, domid=domid,
                      resident_on=resident_on or self.host, is_a_template=False,
                      is_a_snapshot=False, is_control_domain=False, snapshot_of=NULL,
                      snapshots=[], VBDs=[], tags=[], other_config={})
        record.update(fields)
        return self.add("VM", **record)

    def add_disk(self, vm, userdevice, image=None, name="disk", size=64 << 20, vdi_uuid=None):
        """A VBD of `vm`; with `image` a disk VDI backed by that file, else an empty CD."""
        vdi = NULL
        if image is not None:
            vdi = self.add("VDI", name_label=name, virtual_size=str(size), snapshot_of=NULL,
                           is_a_snapshot=False, VBDs=[], uuid=vdi_uuid or str(uuid.uuid4()))
            self.images[vdi] = image
        vbd = self.add("VBD", VM=vm, VDI=vdi, userdevice=str(userdevice),
                       type="Disk" if image is not None else "CD", empty=vdi == NULL)
        self.db["VM"][vm]["VBDs"].append(vbd)
        if vdi != NULL:
            self.db["VDI"][vdi]["VBDs"].append(vbd)
        return vbd

    def snapshots(self):
        """Every snapshot VM and snapshot VDI still in the database."""
        return ([r for r in self.db["VM"].values() if r["is_a_snapshot"]],
                [r for r in self.db["VDI"].values() if r["is_a_snapshot"]])

    def record(self, cls, ref):
        try:
            return self.db[cls][ref]
        except KeyError:
            raise ApiError("HANDLE_INVALID", cls, ref)

    def ref_of(self, cls, value):
        for ref, record in self.db[cls].items():
            if record["uuid"] == value:
                return ref
        raise ApiError("UUID_INVALID", cls, value)

    # -- the wire -------------------------------------------------------------------

    def start(self):
        self.server = _Server(("127.0.0.1", 0), logRequests=False, allow_none=True)
        self.server.register_instance(self)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self):
        return "http://127.0.0.1:{}/".format(self.server.server_address[1])

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def _dispatch(self, method, params):
        try:
            return {"Status": "Success", "Value": self._call(method, list(params))}
        except ApiError as error:
            return {"Status": "Failure", "ErrorDescription": error.description}

    def _call(self, method, params):
        cls, _, name = method.partition(".")
        if cls not in CLASSES:
            raise ApiError("MESSAGE_METHOD_UNKNOWN", method)
        if method != "session.login_with_password":
            session = params.pop(0) if params else None
            if session not in self.db["session"]:
                raise ApiError("SESSION_INVALID", session)
            self.caller.session = session
        with self.lock:
            self.calls.append(method)
        handler = getattr(self, cls + "__" + name, None)
        if handler is None:
            return self._field(method, cls, name, params)
        expected = len(inspect.signature(handler).parameters)
        if len(params) != expected:
            raise ApiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, expected, len(params))
        if name in ("snapshot", "call_plugin"):  # slow: other calls go on meanwhile
            return handler(*params)
        with self.lock:
            return handler(*params)

    def _field(self, method, cls, name, params):
        """get_record, get_by_uuid and get_<field>, for every class."""
        if len(params) != 1:
            raise ApiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, 1, len(params))
        with self.lock:
            if name == "get_by_uuid":
                return self.ref_of(cls, params[0])
            record = self.record(cls, params[0])
            if name == "get_record":
                return dict(record)
            if name.startswith("get_") and name[4:] in record:
                return record[name[4:]]
        raise ApiError("MESSAGE_METHOD_UNKNOWN", method)

    # -- the calls --------------------------------------------------------------------

    def session__login_with_password(self, user, password, version, originator):
        return self.add("session", user=user, originator=originator)

    def session__logout(self):
        del self.db["session"][self.caller.session]
        return ""

    def VM__get_all_records(self):
        return {ref: dict(record) for ref, record in self.db["VM"].items()}

    def host__get_all_records(self):
        return {ref: dict(record) for ref, record in self.db["host"].items()}

    def VM__get_by_name_label(self, label):
        return [ref for ref, r in self.db["VM"].items() if r["name_label"] == label]

    def VM__add_tags(self, vm, tag):
        tags = self.record("VM", vm)["tags"]
        if tag not in tags:
            tags.append(tag)
        return ""

    def VM__add_to_other_config(self, vm, key, value):
        other = self.record("VM", vm)["other_config"]
        if key in other:
            raise ApiError("MAP_DUPLICATE_KEY", "VM", "other_config", vm, key)
        other[key] = value
        return ""

    def VM__snapshot(self, vm, new_name):
        with self.lock:
            source = dict(self.record("VM", vm))
            if source["is_a_template"] or source["is_control_domain"]:
                raise ApiError("OPERATION_NOT_ALLOWED", "VM.snapshot of " + vm)
        if self.before_snapshot is not None:
            self.before_snapshot()
        if self.snapshot_error:
            raise ApiError(*self.snapshot_error)
        with self.lock:
            snap = self.add_vm(new_name, power_state="Halted", resident_on=NULL, domid="-1",
                               is_a_snapshot=True, snapshot_of=vm,
                               snapshot_time=xmlrpc.client.DateTime(time.gmtime()))
            self.db["VM"][vm]["snapshots"].append(snap)
            for vbd in source["VBDs"]:
                row = self.db["VBD"][vbd]
                if row["type"] == "CD":
                    self.add_disk(snap, row["userdevice"])
                    continue
                original = self.db["VDI"][row["VDI"]]
                copy = self.images[row["VDI"]] + ".snapshot-" + str(uuid.uuid4())
                subprocess.run(["cp", "--sparse=always", self.images[row["VDI"]], copy],
                               check=True)
                new_vbd = self.add_disk(snap, row["userdevice"], copy, original["name_label"],
                                        int(original["virtual_size"]))
                new_vdi = self.db["VBD"][new_vbd]["VDI"]
                self.db["VDI"][new_vdi].update(snapshot_of=row["VDI"], is_a_snapshot=True)
            return snap

    def VM__destroy(self, vm):
        record = self.record("VM", vm)
        if record["power_state"] != "Halted":
            raise ApiError("VM_BAD_POWER_STATE", vm, "halted", record["power_state"].lower())
        for vbd in record["VBDs"]:
            vdi = self.db["VBD"].pop(vbd)["VDI"]
            if vdi != NULL:
                self.db["VDI"][vdi]["VBDs"].remove(vbd)
        if record["snapshot_of"] in self.db["VM"]:
            self.db["VM"][record["snapshot_of"]]["snapshots"].remove(vm)
        del self.db["VM"][vm]
        return ""

    def VDI__destroy(self, vdi):
        record = self.record("VDI", vdi)
        if record["VBDs"]:
            raise ApiError("VDI_IN_USE", vdi, "destroy")
        os.unlink(self.images.pop(vdi))
        del self.db["VDI"][vdi]
        return ""

    def host__call_plugin(self, host, plugin, fn, args):
        """As XAPI runs /etc/xapi.d/plugins/<plugin>: the call in argv[1], the answer
        on stdout; a crash is XENAPI_PLUGIN_FAILURE with its output."""
        self.record("host", host)
        installed = self.plugins.get(host, self.plugin)
        if plugin != "xe-quiesce" or installed is None:
            raise ApiError("XENAPI_MISSING_PLUGIN", plugin)
        script, env = installed
        call = xmlrpc.client.dumps((self.caller.session, args), fn)
        proc = subprocess.run([sys.executable, script, call],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, env=env, timeout=600)
        try:
            (answer,), _ = xmlrpc.client.loads(proc.stdout)
        except Exception:
            raise ApiError("XENAPI_PLUGIN_FAILURE", "non-zero exit", proc.stdout, proc.stderr)
        if answer["Status"] != "Success":
            raise ApiError(*answer["ErrorDescription"])
        return answer["Value"]
