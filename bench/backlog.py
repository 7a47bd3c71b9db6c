#!/usr/bin/env python3
"""bench/backlog: backupmx with a very large queue (1,000,000 messages by default).

  1. fills a store with --messages messages of --size bytes (bench/backlog_tool fill, through the
     store's own insert), as if the primary had been down for a long time;
  2. starts `backupmx serve` on it and times, from exec: the SMTP greeting (serving), and the
     scheduler's "N queued messages" line (index loaded); then takes one new message;
  3. reports the server's RSS and PSS with the whole index in memory;
  4. brings the primary (smtp-sink) up and times the first --drain deliveries (backupmx probes
     every second here), to show a huge queue does not slow delivery down;
  5. times one scheduling decision (bench/backlog_tool decide) with 1,000 to --messages queued.

Postfix does not get the 1,000,000: filling its queue through smtpd runs at about 500 msg/s (over
half an hour). Both servers instead get --compare messages (100,000 by default) for a restart
comparison: start to SMTP greeting, and memory once each has taken in its queue. Prints a table;
--write puts it into bench/RESULTS.md (replacing the BACKLOG section). --smoke runs a tiny version.
"""
import argparse
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import (BIN, HERE, Backupmx, Postfix, Sink, free_port, release_port,  # noqa: E402
                 rss_kb, wait)

TOOL = os.environ.get("BACKLOG_TOOL", os.path.join(os.path.dirname(BIN), "backlog_tool"))


def vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def greeting(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(512).startswith(b"220")
    except OSError:
        return False


def restart_compare(n, size):
    """Both servers with the same n messages queued (primary down): the time from starting the
    server to its SMTP greeting, and its memory (PSS) 10 s later, when Postfix's queue manager
    has filled its active queue and backupmx has loaded its index."""
    out = {}
    for kind in (Backupmx, Postfix):
        work = tempfile.mkdtemp(prefix="bmx-backlog-cmp-")
        os.chmod(work, 0o755)
        server = kind(work, free_port(), 3600)
        try:
            t = time.monotonic()
            if kind is Backupmx:  # straight into the store
                subprocess.run([TOOL, "fill", os.path.join(server.dir, "queue.db"), str(n),
                                str(size), "example.test"], check=True, capture_output=True,
                               timeout=3600)
            else:  # Postfix's queue fills through its smtpd
                server.start()
                subprocess.run(["smtp-source", "-s", "20", "-m", str(n), "-l", str(size), "-f",
                                "load@sender.test", "-t", "bob@example.test",
                                f"127.0.0.1:{server.port}"], check=True, capture_output=True,
                               timeout=7200)
                deadline = time.monotonic() + 600
                while server.queued() < n and time.monotonic() < deadline:
                    time.sleep(2)
                server.stop()
            fill_s = time.monotonic() - t
            subprocess.run(["sync"], check=True)
            t0 = time.monotonic()
            if kind is Backupmx:
                release_port(server.port)
                server.log = open(os.path.join(server.dir, "log"), "wb")
                server.proc = subprocess.Popen([BIN, "serve", "--config", server.config],
                                               stdout=server.log, stderr=subprocess.STDOUT)
            else:
                subprocess.Popen(["script", "-qc", f"postfix -c {server.conf} start", "/dev/null"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait(lambda: greeting(server.port), 120, f"{kind.name} greeting")
            serving = time.monotonic() - t0
            time.sleep(10)
            out[kind.name] = {"fill": fill_s, "serving": serving, "pss": rss_kb(server.pids())}
        finally:
            try:
                server.stop()
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--drain", type=int, default=20000)
    ap.add_argument("--compare", type=int, default=100000,
                    help="messages queued in both servers for the restart comparison (0: skip)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.messages, args.drain, args.compare = 2000, 500, 200
    cmp = restart_compare(args.compare, args.size) if args.compare else None
    work = tempfile.mkdtemp(prefix="bmx-backlog-")
    os.chmod(work, 0o755)
    proc = sink = None
    try:
        store = os.path.join(work, "queue.db")
        t = time.monotonic()
        subprocess.run([TOOL, "fill", store, str(args.messages), str(args.size), "example.test"],
                       check=True, capture_output=True, timeout=3600)
        fill_s = time.monotonic() - t
        port, primary = free_port(), free_port()
        config = os.path.join(work, "backlog.toml")
        with open(config, "w") as f:
            f.write(f'''hostname = "mx2.bench.test"
[smtp]
listen = ["127.0.0.1:{port}"]
[queue]
store = "sqlite:{store}"
probe_interval = "1s"
max_age = "30d"
[policy]
spf = false
[log]
level = "info"
[[domain]]
name = "example.test"
primary = "127.0.0.1:{primary}"
''')
        log_path = os.path.join(work, "log")
        log = open(log_path, "wb")
        subprocess.run(["sync"], check=True)
        t0 = time.monotonic()
        release_port(port)
        proc = subprocess.Popen([BIN, "serve", "--config", config], stdout=log,
                                stderr=subprocess.STDOUT)
        wait(lambda: greeting(port), 120, "the SMTP greeting")
        serving_s = time.monotonic() - t0
        loaded = re.compile(rb"scheduler: (\d+) queued messages")

        def index_loaded():
            with open(log_path, "rb") as f:
                m = loaded.search(f.read())
            return int(m.group(1)) if m else None

        wait(lambda: index_loaded() is not None, 600, "the index")
        index_s = time.monotonic() - t0
        if index_loaded() != args.messages:
            raise RuntimeError(f"index holds {index_loaded()}, not {args.messages}")
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:  # still takes mail
            s.sendmail("new@sender.test", ["bob@example.test"], "Subject: new\r\n\r\nnew\r\n")
        time.sleep(1.0)
        rss, pss = vm_rss_kb(proc.pid), rss_kb([proc.pid])
        sink = Sink(primary)
        t1 = time.monotonic()
        sink.start()
        wait(lambda: sink.count >= args.drain, 900, f"{args.drain} deliveries")
        first_s = sink.first - t1
        drain_rate = sink.count / (sink.last - sink.first) if sink.last > sink.first else 0
        decide = []
        n = 1000
        while n <= args.messages:
            out = subprocess.run([TOOL, "decide", str(n)], check=True, capture_output=True,
                                 text=True, timeout=600).stdout
            decide.append((n, float(re.search(r"ns_per_decision=(\d+)", out).group(1))))
            n *= 10
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
        if sink:
            sink.stop()
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"| with {args.messages:,} messages queued ({args.size} bytes each) | backupmx |",
        "| --- | ---: |",
        f"| filling the store (backlog_tool, 10,000 a transaction), s | {fill_s:.1f} |",
        f"| restart to serving (exec to the SMTP greeting), s | {serving_s:.2f} |",
        f"| restart to index loaded (every message scheduled), s | {index_s:.2f} |",
        f"| RSS with the index loaded, MB | {rss / 1024:.0f} |",
        f"| PSS with the index loaded, MB | {pss / 1024:.0f} |",
        f"| primary up to first delivery (probe every 1 s), s | {first_s:.2f} |",
        f"| delivery rate over the first {args.drain:,}, msg/s | {drain_rate:.0f} |",
    ]
    for n, ns in decide:
        lines.append(f"| one scheduling decision with {n:,} queued, ns | {ns:.0f} |")
    if cmp:
        b, p = cmp["backupmx"], cmp["postfix"]
        lines += [
            "",
            f"| with {args.compare:,} messages queued in both | backupmx | Postfix | backupmx/Postfix |",
            "| --- | ---: | ---: | ---: |",
            f"| filling the queue, s (backupmx: straight into the store; Postfix: through smtpd) "
            f"| {b['fill']:.1f} | {p['fill']:.1f} | |",
            f"| start to the SMTP greeting, s | {b['serving']:.2f} | {p['serving']:.2f} "
            f"| {b['serving'] / p['serving']:.2f} |",
            f"| memory (PSS) 10 s after the start, MB | {b['pss'] / 1024:.0f} | {p['pss'] / 1024:.0f} "
            f"| {b['pss'] / max(p['pss'], 1):.2f} |",
        ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        path = os.path.join(HERE, "RESULTS.md")
        with open(path) as f:
            text = f.read()
        section = (f"## Backlog\n\nCommand: `python3 bench/backlog.py --messages {args.messages} "
                   f"--size {args.size} --drain {args.drain} --compare {args.compare} --write`."
                   f"\n\n{table}\n")
        if "BACKLOG" in text:
            text = text.replace("BACKLOG", section)
        elif "## Backlog" in text:
            text = re.sub(r"## Backlog\n.*?(?=\n## |\Z)", section, text, flags=re.S)
        else:
            text += "\n" + section
        with open(path, "w") as f:
            f.write(text)


if __name__ == "__main__":
    sys.exit(main())
