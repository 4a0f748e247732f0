"""The sample database hooks against real PostgreSQL and MariaDB servers.

Each server is Debian's own package (.ci/apt/hooks.txt), started by the test as a private
instance: data on a loop filesystem, a private socket directory, a port on 127.0.0.1.
Two things are proved for each sample: its lock or backup session lasts through a real
freeze and ends at the thaw, and it ends by itself at the deadline when no thaw comes.
"""
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from testbed.loopfs import LoopFs, is_frozen
from testbed.waiting import stop_process
from tests import REPO
from xe_quiesce.config import load_config
from xe_quiesce.core.hooks import HookSet
from xe_quiesce.core.session import QuiesceSession

SAMPLES = os.path.join(REPO,
                       "samples", "hooks")
PG_BIN = "/usr/lib/postgresql/15/bin"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sh(*argv, **kwargs):
    return subprocess.run(list(argv), check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=kwargs.pop("timeout", 60), **kwargs).stdout


@pytest.fixture(scope="module")
def base():
    """A world-traversable directory (the servers' users must reach their sockets)."""
    path = tempfile.mkdtemp(prefix="xe-quiesce-hooks-", dir="/var/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def server_fs(base, name, size_mb, owner):
    fs = LoopFs(base, "ext4", name=name, size_mb=size_mb).create()
    shutil.chown(fs.mount_point, owner, owner)
    return fs


class Postgres(object):
    def __init__(self, base):
        if not os.path.exists(os.path.join(PG_BIN, "initdb")):
            pytest.skip("postgresql-15 is not installed (make apt)")
        self.fs = server_fs(base, "pg", 256, "postgres")
        self.data = self.fs.path("data")
        self.sockets = os.path.join(base, "pg-sockets")
        os.mkdir(self.sockets)
        shutil.chown(self.sockets, "postgres", "postgres")
        self.log = os.path.join(self.sockets, "server.log")
        self.port = free_port()

    def start(self):
        sh("runuser", "-u", "postgres", "--", PG_BIN + "/initdb", "-D", self.data, "-A",
           "trust", "-U", "postgres", "--no-sync")
        options = ("-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} "
                   "-c log_statement=all".format(self.port, self.sockets))
        sh("runuser", "-u", "postgres", "--", PG_BIN + "/pg_ctl", "-D", self.data, "-l",
           self.log, "-o", options, "-w", "start")
        self.sql("CREATE TABLE t (v int)")

    def stop(self):
        subprocess.run(["runuser", "-u", "postgres", "--", PG_BIN + "/pg_ctl", "-D", self.data,
                        "-m", "immediate", "-w", "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def argv(self, query):
        return ["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                "postgres", "-v", "ON_ERROR_STOP=1", "-c", query]

    def sql(self, query, timeout=20):
        return sh(*self.argv(query), timeout=timeout).strip()

    def settings(self, state_dir):
        return ("PG_OS_USER=postgres\nPGHOST={}\nPGPORT={}\nPGDATABASE=postgres\n"
                "STATE_DIR={}\n".format(self.sockets, self.port, state_dir))

    def holders(self):
        return int(self.sql("SELECT count(*) FROM pg_stat_activity "
                            "WHERE application_name = 'xe-quiesce-hold'"))

    def logged(self, text):
        with open(self.log) as handle:
            return handle.read().count(text)


class MariaDB(object):
    def __init__(self, base):
        if not shutil.which("mariadbd", path="/usr/sbin:/usr/bin"):
            pytest.skip("mariadb-server is not installed (make apt)")
        self.fs = server_fs(base, "maria", 512, "mysql")
        self.data = self.fs.path("data")
        self.run_dir = os.path.join(base, "maria-run")
        os.mkdir(self.run_dir)
        shutil.chown(self.run_dir, "mysql", "mysql")
        self.socket = os.path.join(self.run_dir, "mysqld.sock")
        self.error_log = os.path.join(self.run_dir, "mysqld.err")
        self.port = free_port()
        self.process = None

    def start(self):
        sh("mariadb-install-db", "--no-defaults", "--user=mysql", "--datadir=" + self.data,
           "--auth-root-authentication-method=socket", "--skip-test-db",
           "--innodb-log-file-size=8M", timeout=120)
        self.process = subprocess.Popen(
            ["/usr/sbin/mariadbd", "--no-defaults", "--user=mysql", "--datadir=" + self.data,
             "--socket=" + self.socket, "--port={}".format(self.port),
             "--bind-address=127.0.0.1", "--innodb-log-file-size=8M",
             "--innodb-buffer-pool-size=32M",
             "--pid-file=" + os.path.join(self.run_dir, "mysqld.pid"),
             "--log-error=" + self.error_log],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        end = time.monotonic() + 60
        while subprocess.run(["mysqladmin", "--socket=" + self.socket, "ping"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
            assert self.process.poll() is None, open(self.error_log).read()
            assert time.monotonic() < end, "mariadbd did not start"
            time.sleep(0.2)
        self.sql("CREATE DATABASE app; CREATE TABLE app.t (v int) ENGINE=InnoDB")

    def stop(self):
        if self.process:
            stop_process(self.process, 30)

    def argv(self, query):
        return ["mysql", "--socket=" + self.socket, "--batch", "--skip-column-names",
                "-e", query]

    def sql(self, query, timeout=20):
        return sh(*self.argv(query), timeout=timeout).strip()

    def settings(self, state_dir):
        return "MYSQL_SOCKET={}\nLOCK_WAIT_TIMEOUT=5\nSTATE_DIR={}\n".format(
            self.socket, state_dir)

    def write(self):
        """One INSERT that gives up after 1 s if a global read lock is held."""
        return subprocess.run(
            self.argv("SET SESSION lock_wait_timeout = 1; INSERT INTO app.t VALUES (1)"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
            timeout=30)


def _server(kind, base):
    server = kind(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.fs.destroy()


@pytest.fixture(scope="module")
def postgres(base):
    yield from _server(Postgres, base)


@pytest.fixture(scope="module")
def mariadb(base):
    yield from _server(MariaDB, base)


def install_sample(base, tag, sample, settings):
    """The sample as an admin would enable it, with its settings file beside hooks.d."""
    root = tempfile.mkdtemp(prefix=tag + "-", dir=base)
    os.chmod(root, 0o755)
    hooks_dir = os.path.join(root, "hooks.d")
    os.mkdir(hooks_dir, 0o755)
    shutil.copy(os.path.join(SAMPLES, sample), hooks_dir)
    os.chmod(os.path.join(hooks_dir, sample), 0o755)
    settings_file = os.path.join(root, "hook-{}.conf".format(sample.split("-", 1)[1]))
    with open(settings_file, "w") as handle:
        handle.write(settings(os.path.join(root, "state")))
    os.chmod(settings_file, 0o600)
    return hooks_dir


def config_text(server, hooks_dir, run_dir, max_frozen):
    return ("[freeze]\nmounts = {}\nmax-frozen = {}\n[hooks]\ndir = {}\ntimeout = 30\n"
            "[state]\nrun-dir = {}\n".format(server.fs.mount_point, max_frozen, hooks_dir,
                                            run_dir))


def configure(server, base, tag, sample, tmp_path, max_frozen=30):
    hooks_dir = install_sample(base, tag, sample, server.settings)
    path = tmp_path / "xe-quiesce.conf"
    path.write_text(config_text(server, hooks_dir, tmp_path / "run", max_frozen))
    return load_config(str(path))


def env_for(deadline):
    return {"XE_QUIESCE_SESSION": "test", "XE_QUIESCE_TRIGGER": "cli",
            "XE_QUIESCE_DEADLINE": "{:.0f}".format(deadline), "XE_QUIESCE_MOUNTS": ""}


def wait_for(predicate, limit):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if predicate():
            return time.monotonic()
        time.sleep(0.1)
    return None


def test_postgresql_backup_session_lasts_through_the_freeze_and_ends_at_thaw(
        postgres, base, tmp_path):
    config = configure(postgres, base, "pg-thaw", "50-postgresql", tmp_path)
    stops = postgres.logged("pg_backup_stop")
    session = QuiesceSession(config, "xapi")
    summary = session.start()
    try:
        assert summary["hooks"] == ["50-postgresql"]
        assert is_frozen(postgres.fs.mount_point)
        assert postgres.holders() == 1, "the backup session is open while frozen"
        writer = subprocess.Popen(postgres.argv("INSERT INTO t VALUES (1)"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with pytest.raises(subprocess.TimeoutExpired):
            writer.wait(timeout=1.5)
    finally:
        result = session.thaw()
    assert writer.wait(timeout=20) == 0, "the write completes after the thaw"
    assert result["result"] == "thawed" and result["message"] == ""
    assert postgres.holders() == 0
    assert postgres.logged("pg_backup_stop") == stops + 1
    thaw = [r for r in session.hooks.results if r.action == "thaw"][0]
    assert any(line.startswith("START WAL LOCATION") for line in thaw.output["stdout"])


def test_postgresql_backup_session_ends_by_itself_at_the_deadline(postgres, base, tmp_path):
    config = configure(postgres, base, "pg-deadline", "50-postgresql", tmp_path)
    hooks = HookSet.load(config)
    stops = postgres.logged("pg_backup_stop")
    deadline = time.time() + 4
    assert hooks.freeze(env_for(deadline), deadline) == ["50-postgresql"]
    assert postgres.holders() == 1
    ended = wait_for(lambda: postgres.holders() == 0, 12)
    assert ended is not None, "no thaw came, the hook's holder must end the backup itself"
    assert time.time() >= deadline - 1.5, "held until the deadline"
    assert postgres.logged("pg_backup_stop") == stops + 1


def test_mariadb_read_lock_lasts_through_the_freeze_and_ends_at_thaw(
        mariadb, base, tmp_path):
    config = configure(mariadb, base, "maria-thaw", "50-mariadb", tmp_path)
    session = QuiesceSession(config, "xo")
    summary = session.start()
    try:
        assert summary["hooks"] == ["50-mariadb"]
        assert is_frozen(mariadb.fs.mount_point)
        refused = mariadb.write()
        assert refused.returncode != 0 and "Lock wait timeout" in refused.stdout
        time.sleep(1)
        assert "Lock wait timeout" in mariadb.write().stdout, "the lock outlives the hook"
    finally:
        result = session.thaw()
    assert result["result"] == "thawed" and result["message"] == ""
    written = mariadb.write()
    assert written.returncode == 0, written.stdout


def test_mariadb_read_lock_ends_by_itself_at_the_deadline(mariadb, base, tmp_path):
    config = configure(mariadb, base, "maria-deadline", "50-mariadb", tmp_path)
    hooks = HookSet.load(config)
    deadline = time.time() + 4
    assert hooks.freeze(env_for(deadline), deadline) == ["50-mariadb"]
    assert "Lock wait timeout" in mariadb.write().stdout
    released = wait_for(lambda: mariadb.write().returncode == 0, 12)
    assert released is not None, "no thaw came, the server must release the lock itself"
    assert time.time() >= deadline - 1.5, "held until the deadline"


def test_mariadb_thaw_after_the_deadline_is_harmless(mariadb, base, tmp_path):
    config = configure(mariadb, base, "maria-late", "50-mariadb", tmp_path)
    hooks = HookSet.load(config)
    deadline = time.time() + 2
    assert hooks.freeze(env_for(deadline), deadline) == ["50-mariadb"]
    assert wait_for(lambda: mariadb.write().returncode == 0, 8) is not None
    assert hooks.thaw(["50-mariadb"], env_for(deadline)) == []
    assert "already ended" in hooks.results[-1].output["stdout"][0]
