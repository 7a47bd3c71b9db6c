"""pg: real PostgreSQL 15 clusters for the tests, started from the tests themselves.

    c = PgCluster(workdir, port).start()        # initdb + pg_ctl start, on 127.0.0.1:port
    url = c.url("backupmx")                      # creates the database, returns its libpq URI
    s = c.standby(workdir2, port2).start()       # pg_basebackup, synchronous standby of c
    c.kill9(); s.promote()                       # failover
    c.stop()

Clusters listen on 127.0.0.1 only, trust local connections (tests), keep their sockets in their
own directory, and are run as the `postgres` user when the tests run as root (initdb refuses
root). `python3 pg.py start DIR PORT` / `stop DIR` serve ctest's fixture for the store tests.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

from ports import release_port

BIN = "/usr/lib/postgresql/15/bin"


def _as_postgres(args, **kw):
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, capture_output=True, text=True, timeout=kw.pop("timeout", 120),
                          **kw)


def _check(r, what):
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


class PgCluster:
    def __init__(self, workdir, port, name="pg"):
        self.dir = os.path.join(workdir, name)
        self.port = port
        self.log = os.path.join(workdir, f"{name}.log")

    def _own(self, path):
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")

    def init(self):
        if not os.path.exists(os.path.join(BIN, "initdb")):
            raise RuntimeError("PostgreSQL 15 is not installed (apt-get install postgresql-15)")
        os.makedirs(self.dir, mode=0o700)
        self._own(self.dir)
        _check(_as_postgres([f"{BIN}/initdb", "-D", self.dir, "-A", "trust", "-U", "postgres",
                             "--no-sync", "-E", "UTF8"]), "initdb")
        self.configure()
        return self

    def configure(self, extra=""):
        with open(os.path.join(self.dir, "postgresql.conf"), "a") as f:
            f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.dir}'\nmax_connections = 200\n"
                    "fsync = on\nsynchronous_commit = on\nwal_level = replica\n"
                    "max_wal_senders = 5\nshared_buffers = 32MB\n" + extra)
        with open(os.path.join(self.dir, "pg_hba.conf"), "a") as f:
            f.write("\nhost replication all 127.0.0.1/32 trust\n")

    def start(self):
        release_port(self.port)  # (held by free_port until now)
        if not os.path.exists(os.path.join(self.dir, "PG_VERSION")):
            self.init()
        if not os.path.exists(self.log):
            open(self.log, "a").close()
        self._own(self.log)
        _check(_as_postgres([f"{BIN}/pg_ctl", "-D", self.dir, "-l", self.log, "-w", "-t", "60",
                             "start"]), "pg_ctl start")
        return self

    def pid(self):
        try:
            with open(os.path.join(self.dir, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def stop(self):
        if self.pid():
            _as_postgres([f"{BIN}/pg_ctl", "-D", self.dir, "-m", "immediate", "-w", "stop"])

    def kill9(self):
        """The server dies at once, as in a power cut: the postmaster, then its backends."""
        pid = self.pid()
        if not pid:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        subprocess.run(["pkill", "-9", "-P", str(pid)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and subprocess.run(
                ["pgrep", "-P", str(pid)], capture_output=True).returncode == 0:
            time.sleep(0.05)

    def sql(self, query, db="postgres"):
        r = _check(_as_postgres([f"{BIN}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                                 "postgres", "-d", db, "-Atc", query]), f"psql {query}")
        return r.stdout.strip()

    def url(self, db="backupmx", create=True):
        if create and self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'") != "1":
            self.sql(f"CREATE DATABASE {db}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def standby(self, workdir, port, name="standby", app="standby"):
        """A synchronous streaming standby of this cluster: commits wait until it has the WAL."""
        s = PgCluster(workdir, port, name)
        os.makedirs(s.dir, mode=0o700)
        s._own(s.dir)
        _check(_as_postgres([f"{BIN}/pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port),
                             "-U", "postgres", "-D", s.dir, "-R", "-X", "stream", "-c", "fast",
                             "--no-sync"]), "pg_basebackup")
        with open(os.path.join(s.dir, "postgresql.auto.conf"), "a") as f:
            f.write(f"\nprimary_conninfo = 'host=127.0.0.1 port={self.port} user=postgres "
                    f"application_name={app}'\n")
        with open(os.path.join(s.dir, "postgresql.conf"), "a") as f:
            f.write(f"\nport = {port}\nunix_socket_directories = '{s.dir}'\n")
        self.sql(f"ALTER SYSTEM SET synchronous_standby_names = '{app}'")
        self.sql("SELECT pg_reload_conf()")
        return s

    def promote(self):
        _check(_as_postgres([f"{BIN}/pg_ctl", "-D", self.dir, "-w", "promote"]), "promote")


def main(argv):
    if len(argv) >= 4 and argv[1] == "start":
        shutil.rmtree(argv[2], ignore_errors=True)
        os.makedirs(argv[2])
        os.chmod(argv[2], 0o755)
        port = int(argv[3])
        if port == 0:  # any free one
            import socket
            with socket.socket() as so:
                so.bind(("127.0.0.1", 0))
                port = so.getsockname()[1]
        c = PgCluster(argv[2], port).start()
        with open(os.path.join(argv[2], "url"), "w") as f:
            f.write(f"postgresql://postgres@127.0.0.1:{c.port}/postgres\n")
        print("PostgreSQL 15 on 127.0.0.1:%d" % c.port)
        return 0
    if len(argv) >= 3 and argv[1] == "stop":
        PgCluster(argv[2], 0).stop()
        return 0
    print("usage: pg.py start DIR PORT | stop DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
