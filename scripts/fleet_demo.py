#!/usr/bin/env python3
"""make fleet-demo: a backupmx fleet on this machine's loopback, to see it work.

Two PostgreSQL 15 clusters (a primary on 127.0.0.1:5433 and its synchronous standby on :5434,
made with initdb and pg_basebackup) and three backupmx nodes, a, b and c, on 127.0.0.2:2525,
127.0.0.3:2525 and 127.0.0.4:2525, sharing one queue for the domain example.test (its primary:
127.0.0.1:2526, down until you start one). Their admin panels are on http://127.0.0.1:8026/,
:8027/ and :8028/ (one login serves all three: sessions live in the store).
Everything lives under var/fleet/ and stops with Ctrl-C. Nothing listens beyond loopback.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from pg import PgCluster  # noqa: E402

BIN = os.path.join(ROOT, "build", "backupmx")
DIR = os.path.join(ROOT, "var", "fleet")
NODES = [("a", "127.0.0.2", 8026), ("b", "127.0.0.3", 8027), ("c", "127.0.0.4", 8028)]


def config(name, host, admin, url):
    admin_part = f'[admin]\nlisten = ["127.0.0.1:{admin}"]\n' if admin else ""
    return f'''hostname = "mx2.demo.test"
[smtp]
listen = ["{host}:2525"]
{admin_part}[queue]
store = "{url}"
node = "{name}"
lease = "15s"
probe_interval = "10s"
state_dir = "{DIR}/{name}"

[[domain]]
name = "example.test"
primary = "127.0.0.1:2526"
'''


def main():
    if not os.path.exists(BIN):
        sys.exit("build first: make build")
    shutil.rmtree(DIR, ignore_errors=True)
    os.makedirs(DIR)
    os.chmod(DIR, 0o755)
    os.chmod(os.path.dirname(DIR), 0o755)
    db1 = PgCluster(DIR, 5433, "db1")
    db2 = None
    procs = []
    try:
        db1.start()
        db1.url("backupmx")
        db2 = db1.standby(DIR, 5434, "db2")
        db2.start()
        url = ("postgresql://postgres@127.0.0.1:5433,127.0.0.1:5434/backupmx"
               "?target_session_attrs=read-write&connect_timeout=5")
        subprocess.run([BIN, "store", "migrate", "--config", write(NODES[0], url)], check=True)
        for node in NODES:
            cfg = write(node, url)
            log = open(os.path.join(DIR, f"{node[0]}.log"), "ab")
            procs.append(subprocess.Popen([BIN, "serve", "--config", cfg], stdout=log,
                                          stderr=subprocess.STDOUT))
        time.sleep(1)
        pw = subprocess.run([BIN, "admin", "add-user", "admin", "--role", "operator", "--config",
                             os.path.join(DIR, "a.toml")], capture_output=True, text=True)
        print(f"""
fleet up: PostgreSQL primary 127.0.0.1:5433, synchronous standby 127.0.0.1:5434
nodes: a 127.0.0.2:2525, b 127.0.0.3:2525, c 127.0.0.4:2525 (logs in {DIR}/*.log)
panels: http://127.0.0.1:8026/ (a), :8027/ (b), :8028/ (c)  user admin, {pw.stdout.strip().splitlines()[-1]}

try:  swaks --server 127.0.0.3:2525 --to bob@example.test --from alice@sender.test
      ./build/backupmx queue list --config {DIR}/a.toml        # the one queue, from any node
      kill -9 $(pgrep -f 'serve --config {DIR}/b.toml')         # a node dies: c or a takes over
      smtp-sink -u nobody -d /tmp/primary/msg. 127.0.0.1:2526 100 &  # the primary comes back
Ctrl-C stops everything.""")
        stop = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.append(1))
        while not stop and all(p.poll() is None for p in procs):
            time.sleep(0.5)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        if db2:
            db2.stop()
        db1.stop()


def write(node, url):
    name, host, admin = node
    path = os.path.join(DIR, f"{name}.toml")
    with open(path, "w") as f:
        f.write(config(name, host, admin, url))
    return path


if __name__ == "__main__":
    main()
