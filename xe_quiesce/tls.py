"""The sync hook's TLS certificate: the admin's pair, or a self-signed one made once.

Generated with the system `openssl` binary, which every guest has, rather than a new
dependency; old guests' stdlib `ssl` then serves it. XO accepts self-signed certificates.
"""
import os
import socket
import subprocess

from .errors import QuiesceError

CERT_NAME, KEY_NAME = "cert.pem", "key.pem"


def certificate_pair(xo_cfg, label="[xo-sync-hook]"):
    """(cert, key) paths: configured ones as they are, else made in tls-dir on first use.

    `label` names the settings in messages (the guest's config section, or the relay's
    options)."""
    if xo_cfg.cert_file or xo_cfg.key_file:
        if not (xo_cfg.cert_file and xo_cfg.key_file):
            raise QuiesceError("{} cert-file and key-file go together".format(label))
        return xo_cfg.cert_file, xo_cfg.key_file
    cert = os.path.join(xo_cfg.tls_dir, CERT_NAME)
    key = os.path.join(xo_cfg.tls_dir, KEY_NAME)
    if not (os.path.exists(cert) and os.path.exists(key)):
        _make_self_signed(xo_cfg.tls_dir, cert, key, label)
    return cert, key


def _make_self_signed(directory, cert, key, label):
    os.makedirs(directory, mode=0o700, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        result = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
             "-days", "3650", "-subj", "/CN={}".format(socket.gethostname()[:64] or "xe-quiesce"),
             "-keyout", key, "-out", cert],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    except FileNotFoundError:
        raise QuiesceError("cannot make the sync hook's certificate: no `openssl` binary; "
                           "install openssl or set {} cert-file and key-file".format(label))
    finally:
        os.umask(old_umask)
    if result.returncode != 0:
        raise QuiesceError("openssl failed to make a certificate: {}".format(
            result.stdout.strip()[-200:]))
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)


def server_context(cert, key, label="[xo-sync-hook]"):
    """The server's TLS context (ssl loads here: the daemon needs it only once XO calls)."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise QuiesceError("{} cannot load {} / {}: {}".format(label, cert, key, error))
    return context


def check_pair(cert, key):
    """server_context's checks in a child process, and the certificate's fingerprint:
    a bad pair still stops the hook at start, while the daemon itself loads ssl and
    hashlib (OpenSSL's libcrypto, 3-4 MiB) only at XO's first connection."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, whatever happens
        status = 1
        try:
            os.close(read_end)
            try:
                server_context(cert, key)
                answer, status = "ok " + fingerprint(cert), 0
            except QuiesceError as error:
                answer = "error " + str(error)
            os.write(write_end, answer.encode("utf-8", "replace")[:4000])
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode("utf-8", "replace")
    os.waitpid(pid, 0)
    kind, _, text = answer.partition(" ")
    if kind != "ok":
        raise QuiesceError(text or "[xo-sync-hook] cannot load {} / {}".format(cert, key))
    return text


def fingerprint(cert):
    """SHA-256 fingerprint, as `openssl x509 -fingerprint -sha256` prints it."""
    import hashlib
    import ssl

    with open(cert) as handle:
        der = ssl.PEM_cert_to_DER_cert(handle.read())
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
