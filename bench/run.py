#!/usr/bin/env python3
"""bench: backupmx and Postfix side by side as the backup MX of one domain, on one machine, all on
loopback, and the machine's ceiling beside them. Both servers keep durable queues (fsync before
250). Load comes from Postfix's smtp-source; the primary is Postfix's smtp-sink, down while mail is
accepted, then up. The ceiling is the same load against smtp-sink itself: no server in between,
nothing stored — what smtp-source and the kernel's loopback allow on this machine.

Timed runs, interleaved (backupmx, Postfix, ceiling, backupmx, Postfix, ceiling, ...; --runs of
each, at least 3 for --write); medians of:
  accept   messages/s with the primary down (--messages messages of --size bytes, --sessions at once)
  latency  p50/p99 from end of DATA to 250 for --latency messages from one more client, during the
           load and again with the queue idle
  first    seconds from "primary up" to the first delivery (backupmx: its probe; Postfix: a flush
           once its active queue is empty)
  drain    messages/s from "primary up" to the last delivery, and from the first to the last
  idle     memory (PSS) with --idle idle connections open, after the load
Nothing samples, forks or logs on the bench's side while a timed load runs: the bench waits for
smtp-source and runs the one timed client, nothing else.

Then one counting run per server (untimed, the same load): the server starts under
`strace -f --seccomp-bpf -e trace=fsync,fdatasync,...` (only those calls stop it) to count its
fsyncs per accepted and per delivered message, and its memory is sampled every 50 ms the same way
for both servers (one scan of /proc for the server's processes, PSS from smaps_rollup).

Writes a Markdown section (stdout; with --write into bench/RESULTS.md between <!-- run --> and
<!-- /run -->, and the README's figures between <!-- bench:begin --> and <!-- bench:end -->, taken
from the whole of RESULTS.md). --readme only rewrites the README's figures from RESULTS.md.
--smoke runs a tiny version for `make test`. The 1,000,000-message backlog is bench/backlog.py,
the PostgreSQL store bench/fleet.py.
"""
import argparse
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.environ.get("BACKUPMX_BIN", os.path.join(ROOT, "build", "backupmx"))
RESULTS = os.path.join(HERE, "RESULTS.md")
README = os.path.join(ROOT, "README.md")
SYNC_CALLS = "fsync,fdatasync,syncfs,sync_file_range"


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


def proc_tree(roots):
    """The processes in roots and all their descendants, from one scan of /proc (no subprocess:
    Postfix's master forks smtpd and cleanup processes as the load comes, so the scan is redone at
    every sample, for every server alike)."""
    kids = {}
    for e in os.scandir("/proc"):
        if not e.name.isdigit():
            continue
        try:
            with open(f"/proc/{e.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(e.name))
    out, todo = [], [p for p in roots if p]
    while todo and len(out) < 100000:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


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


class PeakSampler:
    """Peak PSS of a server's process tree, sampled every `period` s on a thread (used only in the
    untimed counting run)."""

    def __init__(self, server, period=0.05):
        self.server, self.period, self.peak = server, period, 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stopped.wait(self.period):
            self.peak = max(self.peak, rss_kb(self.server.pids()))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(10)


def fs_info(path):
    """The filesystem `path` is on, from /proc/mounts: type, device, mount point, options."""
    path = os.path.realpath(path)
    best = None
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, fstype, opts = line.split()[:4]
            mnt = mnt.replace("\\040", " ")
            if path == mnt or path.startswith(mnt.rstrip("/") + "/"):
                if best is None or len(mnt) >= len(best[1]):
                    best = (dev, mnt, fstype, opts)
    if not best:
        return "?"
    dev, mnt, fstype, opts = best
    return f"{fstype} ({dev} on {mnt}, {opts})"


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


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
    """The benchmark's backupmx config (bench/fleet.py's nodes use it too). Logs at info, its
    default, as Postfix logs at its own default (every event)."""
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
level = "info"
[[domain]]
name = "example.test"
primary = "127.0.0.1:{primary_port}"
'''


def strace_args(out):
    """A prefix that starts a server under strace, counting its sync calls: with --seccomp-bpf only
    those calls (and execve, to name the program making them) stop the traced processes, and -f
    follows every process and thread it starts."""
    return ["strace", "-f", "--seccomp-bpf", "-qq", "-ttt", "-e", f"trace={SYNC_CALLS},execve",
            "-e", "signal=none", "-o", out]


def sync_calls(path, default):
    """(wall-clock time, program) of each sync call in an strace -f -ttt output; the program is
    the one the process last exec'd (`default` for threads and forks that exec'd nothing)."""
    line_re = re.compile(r"^(\d+)\s+(\d+\.\d+) (\w+)\((.*)")
    syncs = set(SYNC_CALLS.split(","))
    prog, out = {}, []
    with open(path, errors="replace") as f:
        for line in f:
            m = line_re.match(line)
            if not m:
                continue  # "<... resumed>" halves
            pid, t, call, rest = m.groups()
            if call == "execve":
                if rest.startswith('"'):
                    prog[pid] = os.path.basename(rest[1:].split('"', 1)[0])
            elif call in syncs:
                out.append((float(t), prog.get(pid, default)))
    return out


class Backupmx:
    name = "backupmx"

    def __init__(self, work, primary_port, probe_interval):
        self.dir = os.path.join(work, "backupmx")
        os.makedirs(self.dir)
        self.port = free_port()
        self.proc = self.child = None
        self.config = os.path.join(self.dir, "bench.toml")
        with open(self.config, "w") as f:
            f.write(backupmx_config("127.0.0.1", self.port, f"sqlite:{self.dir}/queue.db",
                                    primary_port, probe_interval))

    def start(self, wrap=()):
        release_port(self.port)
        self.log = open(os.path.join(self.dir, "log"), "wb")
        self.proc = subprocess.Popen([*wrap, BIN, "serve", "--config", self.config],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.child = None
        if wrap:  # the server is strace's child
            def child():
                kids = [p for p in proc_tree([self.proc.pid]) if p != self.proc.pid]
                self.child = kids[0] if kids else None
                return self.child
            wait(child, 20, "backupmx under strace")
        try:
            wait(lambda: listening(self.port), 20, "backupmx")
        except RuntimeError:
            sys.stderr.write(open(os.path.join(self.dir, "log")).read()[-4000:])
            raise

    def server_pid(self):
        """backupmx's own pid (bench/backlog.py sets self.proc itself, without start)."""
        return self.child or (self.proc.pid if self.proc else None)

    def pids(self):
        return proc_tree([self.server_pid()])

    def queued(self):
        out = subprocess.run([BIN, "queue", "list", "--config", self.config], capture_output=True,
                             text=True, timeout=120).stdout.strip().splitlines()
        if not out or out[-1] == "Mail queue is empty":
            return 0
        return int(out[-1].split(" in ")[1].split()[0])

    def settle(self):
        pass  # nothing in flight: every message is in the store, due at its next attempt

    def primary_up(self):
        pass  # no flush: the next probe (every probe_interval) finds the primary up

    def stop(self):
        if not self.proc:
            return
        try:
            os.kill(self.server_pid(), signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.proc.wait(60)
        self.log.close()


class Postfix:
    name = "postfix"

    def __init__(self, work, primary_port, probe_interval):
        self.dir = os.path.join(work, "postfix")
        self.conf = os.path.join(self.dir, "conf")
        self.traced = None
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

    def start(self, wrap=()):
        release_port(self.port)
        if wrap:  # strace stays up, following the master, until the master exits
            self.traced = subprocess.Popen([*wrap, "postfix", "-c", self.conf, "start"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait(lambda: listening(self.port), 60, "postfix under strace")
            return
        r = self.postfix("start")
        wait(lambda: listening(self.port), 30, "postfix: " + r.stdout)

    def master(self):
        try:
            with open(os.path.join(self.dir, "queue", "pid", "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self):
        return proc_tree([self.master()])

    def queued(self):
        n = 0
        for q in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(os.path.join(self.dir, "queue", q)):
                n += len(files)
        return n

    def settle(self):
        # What Postfix tried while the primary was down must be in its deferred queue first: a
        # flush then sends all of it (a message still active would wait for the next queue run).
        wait(lambda: all(not files for q in ("maildrop", "incoming", "active")
                         for _, _, files in os.walk(os.path.join(self.dir, "queue", q))),
             300, "postfix active queue empty")

    def primary_up(self):
        # Postfix has no probe: a deferred queue waits for queue_run_delay (300 s by default).
        # Flushed at once instead, which favours Postfix's time to first delivery.
        subprocess.run(["postqueue", "-c", self.conf, "-f"], capture_output=True, timeout=60)

    def stop(self):
        self.postfix("stop")
        wait(lambda: not listening(self.port), 30, "postfix stop")
        if self.traced:
            self.traced.wait(60)


class Ceiling:
    """The same load against smtp-sink itself: no server in between, nothing stored. Its counter
    goes to a file (nothing on the bench's side reads it during the load)."""
    name = "ceiling"

    def __init__(self, work, primary_port, probe_interval):
        self.dir = os.path.join(work, "ceiling")
        os.makedirs(self.dir)
        self.port = free_port()
        self.proc = None

    def start(self):
        release_port(self.port)
        args = ["smtp-sink", "-c"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        self.out = open(os.path.join(self.dir, "counter"), "wb")
        self.proc = subprocess.Popen(args + [f"127.0.0.1:{self.port}", "1000"], stdout=self.out,
                                     stderr=subprocess.DEVNULL)
        wait(lambda: listening(self.port), 10, "smtp-sink (ceiling)")

    def pids(self):
        return proc_tree([self.proc.pid])

    def queued(self):
        """Messages received so far, from the last counter line written."""
        with open(os.path.join(self.dir, "counter"), "rb") as f:
            counts = re.findall(rb"mesg=(\d+)", f.read()[-4096:])
        return int(counts[-1]) if counts else 0

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.out.close()


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


def load_cmd(args, port, messages=None):
    return ["smtp-source", "-s", str(args.sessions), "-m", str(messages or args.messages), "-l",
            str(args.size), "-f", "load@sender.test", "-t", "bob@example.test",
            f"127.0.0.1:{port}"]


def new_work(args, prefix):
    work = tempfile.mkdtemp(prefix=prefix, dir=args.workdir)
    os.chmod(work, 0o755)
    return work


def one_run(kind, args):
    """One timed run. Between the start of the load and its end the bench only waits for
    smtp-source and runs the one timed client: no sampling, no subprocess."""
    work = new_work(args, "bmx-bench-")
    primary_port = free_port()
    server = kind(work, primary_port, args.probe_interval)
    sink = Sink(primary_port)
    try:
        server.start()
        t0 = time.monotonic()
        load = subprocess.Popen(load_cmd(args, server.port), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        busy = []  # end of DATA to 250 for one more client while the load runs
        timer = threading.Thread(target=lambda: busy.extend(
            data_latencies(server.port, args.latency, args.size)))
        timer.start()
        load.wait(1800)
        accept_s = time.monotonic() - t0
        timer.join()
        if load.returncode != 0:
            raise RuntimeError(f"smtp-source against {kind.name} exited {load.returncode}")
        busy.sort()
        lat = sorted(data_latencies(server.port, args.latency, args.size))
        total = args.messages + 2 * args.latency
        wait(lambda: server.queued() >= total, 120, f"all {total} accepted by {kind.name}")
        out = {"accept": args.messages / accept_s, "p50": pct(lat, 50), "p99": pct(lat, 99),
               "busy_p50": pct(busy, 50), "busy_p99": pct(busy, 99)}
        if kind is Ceiling:
            return out
        # idle connections (memory measured after the load, the same way for both servers)
        socks = []
        for _ in range(args.idle):
            socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        time.sleep(1.0)
        out["idle"] = rss_kb(server.pids())
        for s in socks:
            s.close()
        # drain: the primary comes up; backupmx finds out by its probe, Postfix is flushed once its
        # active queue is empty
        server.settle()
        sink.start()
        t1 = time.monotonic()
        server.primary_up()
        wait(lambda: sink.count >= total, 900, "drain")
        wait(lambda: server.queued() == 0, 300, "empty queue")
        out.update({"first": sink.first - t1, "drain": total / (sink.last - t1),
                    "drain_from_first": total / (sink.last - sink.first)})
        return out
    finally:
        try:
            server.stop()
        finally:
            sink.stop()
            shutil.rmtree(work, ignore_errors=True)


def counting_run(kind, args):
    """Untimed: the server under strace (its sync calls counted) and the memory sampler; the same
    load, then the drain."""
    work = new_work(args, "bmx-bench-count-")
    primary_port = free_port()
    server = kind(work, primary_port, args.probe_interval)
    sink = Sink(primary_port)
    trace = os.path.join(work, "strace")
    try:
        server.start(wrap=strace_args(trace))
        with PeakSampler(server) as sampler:
            t0 = time.time()
            subprocess.run(load_cmd(args, server.port), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=3600, check=True)
            t1 = time.time()
        wait(lambda: server.queued() >= args.messages, 120, "all accepted")
        server.settle()
        sink.start()
        t2 = time.time()
        server.primary_up()
        wait(lambda: sink.count >= args.messages, 900, "drain")
        wait(lambda: server.queued() == 0, 300, "empty queue")
        t3 = time.time()
        server.stop()
        server.stop = lambda: None
        calls = sync_calls(trace, kind.name)
        n = args.messages
        accept = [p for t, p in calls if t0 <= t <= t1]
        drain = [p for t, p in calls if t2 <= t <= t3]
        by = {prog: (accept.count(prog) / n, drain.count(prog) / n)
              for prog in sorted(set(accept + drain))}
        return {"sync_accept": len(accept) / n, "sync_drain": len(drain) / n,
                "sync_between": sum(t1 < t < t2 for t, _ in calls), "sync_by": by,
                "rss": sampler.peak}
    finally:
        try:
            server.stop()
        finally:
            sink.stop()
            shutil.rmtree(work, ignore_errors=True)


def pct(sorted_s, p):
    return sorted_s[min(len(sorted_s) - 1, len(sorted_s) * p // 100)] * 1000


# Row labels: bench/run.py writes them and reads them back for the README's figures.
L_ACCEPT = "accept, msg/s (primary down)"
L_BUSY50 = "end of DATA to 250 under the full load, p50 ms"
L_BUSY99 = "end of DATA to 250 under the full load, p99 ms"
L_IDLE50 = "end of DATA to 250, queue idle, p50 ms"
L_IDLE99 = "end of DATA to 250, queue idle, p99 ms"
L_FIRST = "time to first delivery after the primary is up, s (*)"
L_DRAIN = "drain, msg/s, primary up to all delivered (*)"
L_DRAIN1 = "drain, msg/s, first to last delivery"
L_IDLEMEM = "memory (PSS) with {} idle connections, MB"
L_PEAK = "peak memory (PSS) during the load, MB (counting run)"
L_SYNC_IN = "fsync/fdatasync calls per accepted message (counting run)"
L_SYNC_OUT = "fsync/fdatasync calls per delivered message (counting run)"


def table(res, args):
    b, p, c = res["backupmx"], res["postfix"], res["ceiling"]

    def row(label, key, fmt="{:.0f}", scale=1.0, ceiling=None):
        bv, pv = b[key] * scale, p[key] * scale
        cells = [label, fmt.format(bv), fmt.format(pv), f"{bv / pv:.2f}" if pv else "—"]
        if ceiling == "rate":  # the fraction of the ceiling's rate each server reaches
            cv = c[key]
            cells += [fmt.format(cv), f"{bv / cv:.0%}", f"{pv / cv:.0%}"]
        elif ceiling == "time":  # how many times the ceiling's latency
            cv = c[key]
            cells += [fmt.format(cv), f"{bv / cv:.1f}×", f"{pv / cv:.1f}×"]
        elif ceiling == "zero":
            cells += ["0", "", ""]
        else:
            cells += ["—", "", ""]
        return "| " + " | ".join(cells) + " |"

    lines = [
        "| measure | backupmx | Postfix | backupmx/Postfix | ceiling (smtp-sink) | backupmx of "
        "ceiling | Postfix of ceiling |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        row(L_ACCEPT, "accept", ceiling="rate"),
        row(L_BUSY50, "busy_p50", "{:.2f}", ceiling="time"),
        row(L_BUSY99, "busy_p99", "{:.2f}", ceiling="time"),
        row(L_IDLE50, "p50", "{:.2f}", ceiling="time"),
        row(L_IDLE99, "p99", "{:.2f}", ceiling="time"),
        row(L_FIRST, "first", "{:.2f}"),
        row(L_DRAIN, "drain"),
        row(L_DRAIN1, "drain_from_first"),
        row(L_IDLEMEM.format(args.idle), "idle", "{:.1f}", 1 / 1024),
        row(L_PEAK, "rss", "{:.1f}", 1 / 1024),
        row(L_SYNC_IN, "sync_accept", "{:.3f}", ceiling="zero"),
        row(L_SYNC_OUT, "sync_drain", "{:.3f}", ceiling="zero"),
    ]
    return "\n".join(lines)


def by_program(r):
    return ", ".join(f"{prog} {a:.3f} and {d:.3f}" for prog, (a, d) in r["sync_by"].items()) \
        or "none"


def section(res, per_run, args):
    """bench/RESULTS.md's section for this run, between <!-- run --> and <!-- /run -->."""
    spread = "; ".join(f"{name} " + ", ".join(f"{r['accept']:.0f}" for r in runs)
                       for name, runs in per_run.items())
    b, p = res["backupmx"], res["postfix"]

    def para(text):
        return textwrap.fill(" ".join(text.split()), 100, break_on_hyphens=False)

    def bullet(text):
        return textwrap.fill(" ".join(text.split()), 100, initial_indent="- ",
                             subsequent_indent="  ", break_on_hyphens=False)

    fair = [
        f"""Runs are interleaved: backupmx, Postfix, ceiling, then again, {args.runs} times; each
        figure is the median of its {args.runs} runs. Accept msg/s of each run: {spread}.""",
        """Nothing samples or forks on the bench's side while a timed load runs: the bench waits
        for smtp-source and runs the one timed client. Memory with idle connections is measured
        after the load, the same way for both (one scan of /proc for the server's root process and
        all its descendants, PSS summed from smaps_rollup: shared pages counted once). Peak memory
        during the load comes from the counting run (below), sampled every 50 ms in the same way
        for both.""",
        """Both servers log at their defaults: backupmx at `info` (to its stdout, a file), Postfix
        every event (maillog_file, through postlogd).""",
        f"""(*) When the primary comes up, backupmx is left alone: its probe (probe_interval =
        {args.probe_interval}s) finds the primary and the queue drains. Postfix has no probe (its
        deferred queue waits for queue_run_delay, 300 s by default): the bench waits until its
        active queue is empty (what it tried while the primary was down is deferred), then gives
        it `postqueue -f` at once. This favours Postfix on the rows marked (*).""",
        f"""fsyncs: after the timed runs, one counting run per server with the same load (and its
        drain), the server started under `strace -f --seccomp-bpf -e
        trace={SYNC_CALLS},execve`: only those calls stop the server, and only this untimed
        run is traced. Calls from the start of the load to its end per accepted message, and from
        "primary up" to an empty queue per delivered message (between the two: backupmx
        {b['sync_between']:.0f} calls, Postfix {p['sync_between']:.0f}). By program, per accepted
        and per delivered message: backupmx: {by_program(b)}; Postfix: {by_program(p)}.""",
    ]
    head = [
        f"""Both servers: backup MX for example.test, durable queues (fsync before 250), relaying
        to smtp-sink on loopback; load from smtp-source ({args.sessions} sessions,
        {args.size}-byte messages, {args.messages} messages) plus {args.latency} messages from one
        timed client during the load and {args.latency} more after it.""",
        """The ceiling is the same load and the same timed client against smtp-sink itself (no
        server in between, nothing stored): what smtp-source and the kernel allow here. "Of
        ceiling" is a server's rate as a share of the ceiling's, or its latency as a multiple of
        the ceiling's.""",
    ]
    return f"""<!-- run -->
## backupmx beside Postfix and the machine's ceiling (bench/run.py)

Machine: {os.cpu_count()} cores, {cpu_model()}, {platform.platform()}; {time.strftime('%Y-%m-%d')}.
Work directory (queues, stores, logs): {args.workdir}, {fs_info(args.workdir)}.
Command: `python3 bench/run.py --messages {args.messages} --size {args.size} --sessions {args.sessions} --idle {args.idle} --runs {args.runs} --latency {args.latency} --probe-interval {args.probe_interval} --write` (`make bench`).

{(chr(10) * 2).join(para(h) for h in head)}

How the comparison is kept fair:
{chr(10).join(bullet(f) for f in fair)}

{table(res, args)}
<!-- /run -->
"""


def replace_section(text, begin, end, new, before=()):
    """text with the part from `begin` to `end` (markers included) replaced by `new`; if absent,
    `new` goes before the first line that starts with one of `before` (or at the end). The
    sections' order: bench/run.py's, bench/fleet.py's, then bench/backlog.py's "## Backlog" last
    (it replaces from its heading to the next "## " heading or the end)."""
    if begin in text and end in text:
        a = text.index(begin)
        b = text.index(end) + len(end)
        if text[b:b + 1] == "\n":
            b += 1
        return text[:a] + new + text[b:]
    at = [text.index("\n" + s) + 1 for s in before if ("\n" + s) in text]
    if at:
        a = min(at)
        return text[:a] + new + "\n" + text[a:]
    return text.rstrip("\n") + "\n\n" + new


def cells(text, label):
    """The cells of the first table row of text whose first cell starts with label."""
    for line in text.splitlines():
        if line.startswith("| " + label):
            return [c.strip() for c in line.strip().strip("|").split("|")]
    return None


def readme_block(text):
    """The README's figures, from bench/RESULTS.md's text (whatever run wrote it)."""
    run = text
    if "<!-- run -->" in text and "<!-- /run -->" in text:
        run = text[text.index("<!-- run -->"):text.index("<!-- /run -->")]
    date = re.search(r"; (\d{4}-\d{2}-\d{2})\.", run)
    cores = re.search(r"Machine: (\d+) cores", run)
    probe = re.search(r"--probe-interval (\d+)", run)
    runs = re.search(r"--runs (\d+)", run)
    fs = re.search(r"Work directory \(queues, stores, logs\): \S+, (\S+)", run)
    parts = []
    acc = cells(run, L_ACCEPT)
    if acc:
        s = f"accept {acc[3]}× Postfix ({acc[1]} against {acc[2]} msg/s"
        if len(acc) >= 7 and acc[4] not in ("—", ""):
            s += (f"; the same load against smtp-sink alone, the machine's ceiling, {acc[4]} msg/s: "
                  f"backupmx reaches {acc[5]} of it, Postfix {acc[6]}")
        parts.append(s + ")")
    d = cells(run, L_DRAIN1)
    if d:
        parts.append(f"drain {d[3]}× ({d[1]} against {d[2]} msg/s, first to last delivery)")
    lb = cells(run, L_BUSY50)
    if lb:
        s = f"end of DATA to 250 under full load p50 {lb[1]} ms (Postfix {lb[2]} ms"
        if len(lb) >= 7 and lb[4] not in ("—", ""):
            s += f", smtp-sink {lb[4]} ms"
        parts.append(s + ")")
    fi = cells(run, "time to first delivery")
    if fi:
        parts.append(f"first delivery {fi[1]} s after the primary is back (probe every "
                     f"{probe.group(1) if probe else '?'} s; Postfix, flushed at once, {fi[2]} s)")
    idle = re.search(r"^\| memory \(PSS\) with (\d+) idle connections, MB \| ([\d.]+) \| ([\d.]+)",
                     run, re.M)
    if idle:
        parts.append(f"{int(idle.group(1)):,} idle connections in {float(idle.group(2)):.0f} MB "
                     f"(Postfix {float(idle.group(3)):.0f} MB)")
    sy = cells(run, L_SYNC_IN)
    if sy:
        parts.append(f"fsyncs per accepted message: backupmx {sy[1]}, Postfix {sy[2]}"
                     + (f" (work directory on {fs.group(1)})" if fs else ""))
    out = ""
    if parts:
        where = f"On this {cores.group(1)}-core machine" if cores else "On this machine"
        out = (f"{where} (bench/RESULTS.md, {date.group(1) if date else '?'}, medians of "
               f"{runs.group(1) if runs else '?'} runs): " + ", ".join(parts) + ".")
        if "<!-- bench:earlier-method -->" in run:
            out += (" These figures are from the earlier method, unfair to Postfix (runs not "
                    "interleaved, Postfix's memory sampled by forking pgrep during its load, "
                    "backupmx logging only warnings); bench/RESULTS.md says what the fair run "
                    "changes.")
    bl = re.search(r"^\| with ([\d,]+) messages queued \(\d+ bytes each\)", text, re.M)
    greet = cells(text, "restart to serving")
    index = cells(text, "restart to index loaded")
    mem = cells(text, "RSS with the index loaded, MB")
    if bl and greet and index and mem:
        out += (f" With {bl.group(1)} queued the greeting comes {greet[1]} s after start, every "
                f"message is scheduled after {index[1]} s, and the index takes {mem[1]} MB.")
    fleet = text[text.index("<!-- fleet -->"):] if "<!-- fleet -->" in text else ""
    x1, sync = cells(fleet, "pg x1 |"), cells(fleet, "pg x1 sync |")
    if x1 and sync:  # (a fleet run of the fair method: it has the standby setups)
        out += (f" On a PostgreSQL store one node accepts {x1[1]} msg/s, {sync[1]} with a "
                f"synchronous standby (bench/fleet.py).")
    return textwrap.fill(out.strip(), 100, break_on_hyphens=False)


README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"


def update_readme():
    """The README's figures (between its bench markers) from the current bench/RESULTS.md."""
    with open(RESULTS) as f:
        block = readme_block(f.read())
    with open(README) as f:
        text = f.read()
    if README_BEGIN not in text or README_END not in text:
        print(f"README.md has no {README_BEGIN} ... {README_END}: figures not written",
              file=sys.stderr)
        return
    a = text.index(README_BEGIN) + len(README_BEGIN)
    b = text.index(README_END)
    new = text[:a] + "\n" + block + "\n" + text[b:]
    if new != text:
        with open(README, "w") as f:
            f.write(new)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=10240)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each, interleaved")
    ap.add_argument("--latency", type=int, default=500, help="messages timed end-of-DATA -> 250")
    ap.add_argument("--probe-interval", type=int, default=5, help="backupmx probe_interval, s")
    ap.add_argument("--workdir", default=tempfile.gettempdir(),
                    help="where the servers' queues go (its filesystem is recorded)")
    ap.add_argument("--no-count", action="store_true", help="skip the counting runs (strace)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--readme", action="store_true",
                    help="only rewrite the README's figures from bench/RESULTS.md")
    args = ap.parse_args()
    if args.readme:
        update_readme()
        return 0
    if args.smoke:
        args.messages, args.runs, args.idle, args.latency, args.probe_interval = 200, 2, 50, 20, 1
    if args.write and (args.runs < 3 or args.no_count or args.smoke):
        ap.error("--write needs --runs 3 or more and the counting runs (no --no-count, --smoke)")
    kinds = (Backupmx, Postfix, Ceiling)
    per_run = {k.name: [] for k in kinds}
    for i in range(args.runs):  # interleaved: A B C A B C ...
        for kind in kinds:
            r = one_run(kind, args)
            per_run[kind.name].append(r)
            print(f"run {i + 1} {kind.name}: accept {r['accept']:.0f} msg/s", flush=True)
    res = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
           for name, runs in per_run.items()}
    for kind in (Backupmx, Postfix):
        if args.no_count:
            res[kind.name].update(rss=0, sync_accept=0, sync_between=0, sync_drain=0,
                                  sync_by={})
        else:
            res[kind.name].update(counting_run(kind, args))
    out = section(res, per_run, args)
    print(out)
    if args.smoke:  # the README's figures still come out of the current RESULTS.md
        with open(RESULTS) as f:
            if not readme_block(f.read()):
                raise RuntimeError("no README figures from bench/RESULTS.md")
    if args.write:
        text = open(RESULTS).read() if os.path.exists(RESULTS) else "# Benchmark results\n"
        text = replace_section(text, "<!-- run -->", "<!-- /run -->", out,
                               before=("<!-- fleet", "## Backlog", "BACKLOG"))
        with open(RESULTS, "w") as f:
            f.write(text)
        update_readme()
    return 0


if __name__ == "__main__":
    sys.exit(main())
