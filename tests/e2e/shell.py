"""Commands for the bed's own scripts, in dom0 and in the domU (both images carry /e2e)."""

import subprocess


def run(*cmd, **kw):
    """(exit status, stdout and stderr together, stripped)."""
    proc = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, **kw)
    return proc.returncode, proc.stdout.strip()


def must(*cmd, error=RuntimeError):
    """The output of a command that must succeed; `error` with its tail otherwise."""
    code, text = run(*cmd)
    if code:
        raise error("%s: exit %d: %s" % (" ".join(cmd), code, text[-400:]))
    return text
