#!/usr/bin/env python3
"""bench: backupmx and Postfix side by side as the backup MX of one domain, on one machine, all on
loopback. Both keep durable queues (fsync before 250). Load comes from Postfix's smtp-source; the
primary is Postfix's smtp-sink, down while mail is accepted, then up.

Measures, for each server, the median of --runs runs:
  accept   messages/s with the primary down (--messages messages of --size bytes, --sessions at once)
  latency  p50/p99 from end of DATA to 250 for --latency messages from one more client, during the
           load and again with the queue idle
  first    seconds from "primary up" to the first delivery (backupmx: its probe; Postfix: a flush)
  drain    messages/s from "primary up" to the last delivery, and from the first to the last
  rss      peak memory (PSS, summed over the server's processes) during accept
  idle     the same with --idle idle connections open

Writes a Markdown table (stdout, and bench/RESULTS.md with --write). --smoke runs a tiny version
for `make test`. The 1,000,000-message backlog is bench/backlog.py.
"""
import argparse
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.environ.get("BACKUPMX_BIN", os.path.join(ROOT, "build", "backupmx"))


# free_port holds the port until its server starts: the smoke benchmarks run beside the tests
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from ports import free_port, release_port  # noqa: E402


def wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def rss_kb(pids):
    """Proportional set size (PSS) summed over the processes: shared pages counted once, so a
    many-process server (Postfix) and a one-process server (backupmx) compare fairly."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Sink:
    """smtp-sink as the primary; its -c counter (read as it prints) times the first and the last
    delivery."""

    def __init__(self, port):
        self.port = port
        self.proc = None
        self.count = 0
        self.first = self.last = None

    def start(self):
        release_port(self.port)
        args = ["smtp-sink", "-c"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        self.proc = subprocess.Popen(args + [f"127.0.0.1:{self.port}", "1000"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        threading.Thread(target=self._count, daemon=True).start()
        wait(lambda: listening(self.port), 10, "smtp-sink")

    def _count(self):
        pending = b""
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                return
            t = time.monotonic()
            pending += chunk
            *done, pending = pending.split(b"\r")
            for status in done:  # "sess=N quit=N mesg=N"
                n = int(status.rsplit(b"mesg=", 1)[1])
                if n and self.first is None:
                    self.first = t
                if n > self.count:
                    self.count, self.last = n, t

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)


def backupmx_config(host, port, store, primary_port, probe_interval, extra_queue=""):
    """The benchmark's backupmx config (bench/fleet.py's nodes use it too)."""
    return f'''hostname = "mx2.bench.test"
[smtp]
listen = ["{host}:{port}"]
max_connections = 5000
[queue]
store = "{store}"
probe_interval = "{probe_interval}s"
retry_min = "1h"
retry_max = "2h"
{extra_queue}
[policy]
spf = false
[log]
level = "warn"
[[domain]]
name = "example.test"
primary = "127.0.0.1:{primary_port}"
'''


class Backupmx:
    name = "backupmx"

    def __init__(self, work, primary_port, probe_interval):
        self.dir = os.path.join(work, "backupmx")
        os.makedirs(self.dir)
        self.port = free_port()
        self.config = os.path.join(self.dir, "bench.toml")
        with open(self.config, "w") as f:
            f.write(backupmx_config("127.0.0.1", self.port, f"sqlite:{self.dir}/queue.db",
                                    primary_port, probe_interval))

    def start(self):
        release_port(self.port)
        self.log = open(os.path.join(self.dir, "log"), "wb")
        self.proc = subprocess.Popen([BIN, "serve", "--config", self.config], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait(lambda: listening(self.port), 20, "backupmx")

    def pids(self):
        return [self.proc.pid]

    def queued(self):
        out = subprocess.run([BIN, "queue", "list", "--config", self.config], capture_output=True,
                             text=True, timeout=120).stdout.strip().splitlines()
        if not out or out[-1] == "Mail queue is empty":
            return 0
        return int(out[-1].split(" in ")[1].split()[0])

    def primary_up(self):
        pass  # no flush: the next probe (every probe_interval) finds the primary up

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


class Postfix:
    name = "postfix"

    def __init__(self, work, primary_port, probe_interval):
        self.dir = os.path.join(work, "postfix")
        self.conf = os.path.join(self.dir, "conf")
        for d in ("conf", "queue", "data"):
            os.makedirs(os.path.join(self.dir, d))
        self.port = free_port()
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(f"""compatibility_level = 3.6
queue_directory = {self.dir}/queue
data_directory = {self.dir}/data
myhostname = mx2.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
relay_domains = example.test
transport_maps = inline:{{ example.test=smtp:[127.0.0.1]:{primary_port} }}
smtpd_recipient_restrictions = permit_auth_destination, reject
mynetworks = 127.0.0.0/8
maillog_file = {self.dir}/maillog
maillog_file_prefixes = {self.dir}
default_process_limit = 1100
smtpd_client_connection_count_limit = 0
""")
        master = open("/etc/postfix/master.cf").read().splitlines()
        out = []
        for line in master:
            if line.startswith("smtp      inet"):
                line = f"127.0.0.1:{self.port} inet n - n - - smtpd"
            out.append(line)
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write("\n".join(out) + "\n")
        shutil.chown(os.path.join(self.dir, "data"), "postfix")

    def postfix(self, *args):
        # postfix(1) reports only to a terminal or syslog: `script` gives it one.
        return subprocess.run(["script", "-qc", " ".join(["postfix", "-c", self.conf, *args]),
                               "/dev/null"], capture_output=True, text=True, timeout=120)

    def start(self):
        release_port(self.port)
        r = self.postfix("start")
        wait(lambda: listening(self.port), 30, "postfix: " + r.stdout)

    def pids(self):
        try:
            with open(os.path.join(self.dir, "queue", "pid", "master.pid")) as f:
                master = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        kids = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
        return [master] + [int(p) for p in kids.split()]

    def queued(self):
        n = 0
        for q in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(os.path.join(self.dir, "queue", q)):
                n += len(files)
        return n

    def primary_up(self):
        # Postfix has no probe: a deferred queue waits for queue_run_delay (300 s by default).
        # Flushed at once instead, which favours Postfix's time to first delivery.
        subprocess.run(["postqueue", "-c", self.conf, "-f"], capture_output=True, timeout=60)

    def stop(self):
        self.postfix("stop")
        wait(lambda: not listening(self.port), 30, "postfix stop")


def data_latencies(port, count, size):
    """Seconds from the end of DATA (CRLF . CRLF sent) to the 250, for `count` messages in a row."""
    out = []
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delay in the timing
    f = sock.makefile("rb")

    def reply():
        while True:
            line = f.readline()
            if not line or line[3:4] != b"-":
                return line

    reply()
    sock.sendall(b"EHLO latency.test\r\n")
    reply()
    body = b"Subject: latency\r\n\r\n" + (b"z" * 78 + b"\r\n") * (size // 80)
    for _ in range(count):
        sock.sendall(b"MAIL FROM:<l@sender.test>\r\n")
        reply()
        sock.sendall(b"RCPT TO:<bob@example.test>\r\n")
        reply()
        sock.sendall(b"DATA\r\n")
        reply()
        sock.sendall(body[:-200])
        t = time.perf_counter()
        sock.sendall(body[-200:] + b".\r\n")
        r = reply()
        out.append(time.perf_counter() - t)
        if not r.startswith(b"250"):
            raise RuntimeError(f"latency probe got {r!r}")
    sock.sendall(b"QUIT\r\n")
    sock.close()
    return out


def one_run(kind, args):
    work = tempfile.mkdtemp(prefix="bmx-bench-")
    os.chmod(work, 0o755)
    primary_port = free_port()
    server = kind(work, primary_port, args.probe_interval)
    sink = Sink(primary_port)
    try:
        server.start()
        peak = 0
        t0 = time.monotonic()
        load = subprocess.Popen(["smtp-source", "-s", str(args.sessions), "-m", str(args.messages),
                                 "-l", str(args.size), "-f", "load@sender.test", "-t",
                                 "bob@example.test", f"127.0.0.1:{server.port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        busy = []  # end of DATA to 250 for one more client while the load runs
        timer = threading.Thread(target=lambda: busy.extend(
            data_latencies(server.port, args.latency, args.size)))
        timer.start()
        while load.poll() is None:
            peak = max(peak, rss_kb(server.pids()))
            time.sleep(0.05)
        accept_s = time.monotonic() - t0
        timer.join()
        busy.sort()
        lat = sorted(data_latencies(server.port, args.latency, args.size))
        total = args.messages + 2 * args.latency
        wait(lambda: server.queued() >= total, 120, "all queued")
        # idle connections
        socks = []
        for _ in range(args.idle):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            socks.append(s)
        time.sleep(1.0)
        idle = rss_kb(server.pids())
        for s in socks:
            s.close()
        # drain: the primary comes up; backupmx finds out by its probe, Postfix is flushed
        sink.start()
        t1 = time.monotonic()
        server.primary_up()
        wait(lambda: sink.count >= total, 900, "drain")
        wait(lambda: server.queued() == 0, 300, "empty queue")
        return {"accept": args.messages / accept_s, "first": sink.first - t1,
                "drain": total / (sink.last - t1), "drain_from_first": total / (sink.last - sink.first),
                "rss": peak, "idle": idle, "p50": pct(lat, 50), "p99": pct(lat, 99),
                "busy_p50": pct(busy, 50), "busy_p99": pct(busy, 99)}
    finally:
        try:
            server.stop()
        finally:
            sink.stop()
            shutil.rmtree(work, ignore_errors=True)


def pct(sorted_s, p):
    return sorted_s[min(len(sorted_s) - 1, len(sorted_s) * p // 100)] * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=10240)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency", type=int, default=500, help="messages timed end-of-DATA -> 250")
    ap.add_argument("--probe-interval", type=int, default=5, help="backupmx probe_interval, s")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.messages, args.runs, args.idle, args.latency, args.probe_interval = 200, 1, 50, 20, 1
    results = {}
    for kind in (Backupmx, Postfix):
        runs = [one_run(kind, args) for _ in range(args.runs)]
        results[kind.name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    b, p = results["backupmx"], results["postfix"]

    def row(label, key, fmt="{:.0f}", scale=1.0):
        bv, pv = b[key] * scale, p[key] * scale
        return f"| {label} | {fmt.format(bv)} | {fmt.format(pv)} | {bv / pv if pv else 0:.2f} |"

    lines = [
        "| measure | backupmx | Postfix | backupmx/Postfix |",
        "| --- | ---: | ---: | ---: |",
        row("accept, msg/s (primary down)", "accept"),
        row("end of DATA to 250 under the full load, p50 ms", "busy_p50", "{:.2f}"),
        row("end of DATA to 250 under the full load, p99 ms", "busy_p99", "{:.2f}"),
        row("end of DATA to 250, queue idle, p50 ms", "p50", "{:.2f}"),
        row("end of DATA to 250, queue idle, p99 ms", "p99", "{:.2f}"),
        row("time to first delivery after the primary is up, s (*)", "first", "{:.2f}"),
        row("drain, msg/s, primary up to all delivered (*)", "drain"),
        row("drain, msg/s, first to last delivery", "drain_from_first"),
        row("peak memory (PSS) during accept, MB", "rss", "{:.1f}", 1 / 1024),
        row(f"memory (PSS) with {args.idle} idle connections, MB", "idle", "{:.1f}", 1 / 1024),
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        cpu = "?"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
            f.write(f"""# Benchmark results

Machine: {os.cpu_count()} cores, {cpu}, {platform.platform()}; {time.strftime('%Y-%m-%d')}.
Command: `python3 bench/run.py --messages {args.messages} --size {args.size} --sessions {args.sessions} --idle {args.idle} --runs {args.runs} --probe-interval {args.probe_interval} --write` (`make bench`).
Both servers: backup MX for example.test, durable queues (fsync before 250), relaying to
smtp-sink on loopback; load from smtp-source ({args.sessions} sessions, {args.size}-byte messages,
{args.messages} messages) plus {args.latency} messages from one timed client during the load and
{args.latency} more after it. Medians of {args.runs} runs. Memory is PSS summed over each server's
processes (shared pages counted once).

(*) When the primary comes up, backupmx is left alone: its probe (probe_interval =
{args.probe_interval}s) finds the primary and the queue drains. Postfix has no probe (its deferred
queue waits for queue_run_delay, 300 s by default), so it gets `postqueue -f` at once: the
comparison favours Postfix on these two rows.

{table}

BACKLOG

Notes: see bench/NOTES.md for what was tried and profiled.
""")


if __name__ == "__main__":
    sys.exit(main())
