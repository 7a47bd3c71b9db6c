#!/usr/bin/env python3
"""bench/fleet: the PostgreSQL store beside SQLite and Postfix — accept and drain rates.

Setups, each the backup MX of example.test on loopback with the primary (smtp-sink) down while
mail is accepted, then up:
  sqlite      one backupmx node, embedded SQLite store (as in bench/run.py)
  pg x1       one node on a PostgreSQL 15 store (fsync on, synchronous_commit on)
  pg x1 sync  the same with a synchronous streaming standby on the same machine (pg_basebackup,
              synchronous_standby_names): every commit waits until the standby has flushed it
  pg x3       three nodes (127.0.0.2-4) on the same store, the load split over them
  pg x3 sync  the same with the synchronous standby
  postfix     Postfix, for the ratio
Measures accept msg/s (smtp-source, --sessions in all) and drain msg/s from the first to the last
delivery (and from "primary up", which includes the wait for a probe). Runs are interleaved (every
setup once, then again, --runs times; at least 3 for --write); medians. Postfix is flushed once its
active queue is empty; every node logs at info, its default, as Postfix logs every event.
--write puts a section into bench/RESULTS.md (replacing an earlier one) and the README's figures
from the whole of it; --smoke is tiny.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "e2e"))
from pg import PgCluster  # noqa: E402
from run import (BIN, RESULTS, Postfix, Sink, backupmx_config, free_port, fs_info,  # noqa: E402
                 release_port, replace_section, update_readme, wait)

SETUPS = ["sqlite", "pg x1", "pg x1 sync", "pg x3", "pg x3 sync", "postfix"]


class Nodes:
    """One or more backupmx nodes on one store."""

    def __init__(self, work, primary_port, probe_interval, store, hosts):
        self.procs, self.configs, self.ports = [], [], []
        self.hosts = hosts
        for i, host in enumerate(hosts):
            d = os.path.join(work, f"node{i}")
            os.makedirs(d)
            port = free_port()
            cfg = os.path.join(d, "bench.toml")
            with open(cfg, "w") as f:
                f.write(backupmx_config(host, port, store or f"sqlite:{d}/queue.db",
                                        primary_port, probe_interval,
                                        f'node = "n{i}"\nstate_dir = "{d}"'))
            self.configs.append(cfg)
            self.ports.append(port)
        self.dirs = [os.path.dirname(c) for c in self.configs]

    def start(self):
        for port in self.ports:
            release_port(port)
        for cfg, d in zip(self.configs, self.dirs):
            log = open(os.path.join(d, "log"), "wb")
            self.procs.append(subprocess.Popen([BIN, "serve", "--config", cfg], stdout=log,
                                               stderr=subprocess.STDOUT))
        for host, port, d in zip(self.hosts, self.ports, self.dirs):
            try:
                wait(lambda: listening_on(host, port), 30, "backupmx node")
            except RuntimeError:
                sys.stderr.write(open(os.path.join(d, "log")).read())
                raise

    def settle(self):
        pass

    def queued(self):
        out = subprocess.run([BIN, "queue", "summary", "--json", "--config", self.configs[0]],
                             capture_output=True, text=True, timeout=120).stdout
        import json
        return sum(d["messages"] for d in json.loads(out or "[]"))

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(60)


def listening_on(host, port):
    import socket
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def run_once(setup, args):
    work = tempfile.mkdtemp(prefix="bmx-fleet-bench-", dir=args.workdir)
    os.chmod(work, 0o755)
    primary_port = free_port()
    sink = Sink(primary_port)
    pg = standby = server = None
    try:
        if setup == "postfix":
            server = Postfix(work, primary_port, args.probe_interval)
            targets = [("127.0.0.1", None)]
        else:
            store = None
            if setup.startswith("pg"):
                pg = PgCluster(work, free_port())
                pg.start()
                store = pg.url("backupmx")
                if setup.endswith(" sync"):  # commits wait for the standby's flush
                    standby = pg.standby(work, free_port())
                    standby.start()
                    wait(lambda: pg.sql("SELECT sync_state FROM pg_stat_replication") == "sync",
                         60, "a synchronous standby")
            hosts = (["127.0.0.2", "127.0.0.3", "127.0.0.4"] if setup.startswith("pg x3")
                     else ["127.0.0.1"])
            server = Nodes(work, primary_port, args.probe_interval, store, hosts)
        server.start()
        if setup == "postfix":
            targets = [("127.0.0.1", server.port)]
        else:
            targets = list(zip(server.hosts, server.ports))
        share = args.messages // len(targets)
        t0 = time.monotonic()
        loads = [subprocess.Popen(["smtp-source", "-s", str(max(1, args.sessions // len(targets))),
                                   "-m", str(share), "-l", str(args.size), "-f",
                                   "load@sender.test", "-t", "bob@example.test",
                                   f"{host}:{port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for host, port in targets]
        for p in loads:
            p.wait(1800)
        accept_s = time.monotonic() - t0
        total = share * len(targets)
        wait(lambda: server.queued() >= total, 300, "all queued")
        server.settle()  # Postfix: its active queue empty, all of it deferred
        sink.start()
        t1 = time.monotonic()
        if setup == "postfix":
            server.primary_up()
        wait(lambda: sink.count >= total, 1800, "drain")
        return {"accept": total / accept_s, "drain": total / (sink.last - t1),
                "drain_from_first": total / (sink.last - sink.first)}
    finally:
        try:
            if server:
                server.stop()
        finally:
            sink.stop()
            if standby:
                standby.stop()
            if pg:
                pg.stop()
            shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=10240)
    ap.add_argument("--sessions", type=int, default=21)
    ap.add_argument("--runs", type=int, default=3, help="runs of each setup, interleaved")
    ap.add_argument("--probe-interval", type=int, default=5)
    ap.add_argument("--workdir", default=tempfile.gettempdir(),
                    help="where the stores and queues go (its filesystem is recorded)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--only", help="comma-separated setups to run (no table, no --write): "
                    + ", ".join(SETUPS))
    args = ap.parse_args()
    if args.smoke:
        args.messages, args.runs, args.probe_interval = 300, 1, 1
    if args.write and (args.runs < 3 or args.only or args.smoke):
        ap.error("--write needs every setup (no --only, --smoke) and --runs 3 or more")
    setups = args.only.split(",") if args.only else SETUPS
    if args.smoke and not args.only:  # short: the standby's code path once, with one node
        setups = [s for s in SETUPS if s != "pg x3 sync"]
    for s in setups:
        if s not in SETUPS:
            ap.error(f"no setup {s!r}: {', '.join(SETUPS)}")
    runs = {s: [] for s in setups}
    for i in range(args.runs):  # interleaved: every setup once, then again
        for s in setups:
            runs[s].append(run_once(s, args))
            print(f"run {i + 1} {s}:", {k: round(v) for k, v in runs[s][-1].items()}, flush=True)
    results = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in runs.items()}
    for s in setups:
        print(s, {k: round(v) for k, v in results[s].items()}, flush=True)
    if args.only:
        return 0
    pf = results["postfix"]
    lines = ["| setup | accept msg/s | vs Postfix | drain msg/s, first to last | vs Postfix | "
             "drain msg/s, from primary up |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in setups:
        r = results[s]
        lines.append(f"| {s} | {r['accept']:.0f} | {r['accept'] / pf['accept']:.2f} | "
                     f"{r['drain_from_first']:.0f} | "
                     f"{r['drain_from_first'] / pf['drain_from_first']:.2f} | {r['drain']:.0f} |")
    table = "\n".join(lines)
    print(table)
    spread = "; ".join(f"{s} " + ", ".join(f"{r['accept']:.0f}" for r in rs)
                       for s, rs in runs.items())
    about = textwrap.fill(" ".join(f"""
The same load (smtp-source, {args.sessions} sessions in all, split evenly over the nodes) with the
primary down, then the primary up (backupmx by its probe every {args.probe_interval}s; Postfix,
once its active queue is empty, flushed at once). PostgreSQL 15 on the same machine with fsync
and synchronous_commit on; the three nodes share the one database and this machine's cores.
"sync": the same database with a synchronous streaming standby on this machine (pg_basebackup,
synchronous_standby_names), so every commit waits until the standby has flushed it too. Every
backupmx node logs at `info` (its default), Postfix every event (its default). Runs interleaved
(every setup once, then again, {args.runs} times); medians. Accept msg/s of each run: {spread}.
""".split()), 100, break_on_hyphens=False)
    section = f"""<!-- fleet -->
## The PostgreSQL store: one node and a fleet of three, with and without a synchronous standby (bench/fleet.py)

`python3 bench/fleet.py --messages {args.messages} --size {args.size} --sessions {args.sessions} --runs {args.runs} --probe-interval {args.probe_interval} --write` (`make bench`), {time.strftime('%Y-%m-%d')}.
Work directory (stores, queues, logs): {args.workdir}, {fs_info(args.workdir)}.
{about}

{table}
<!-- /fleet -->
"""
    if args.write:
        text = open(RESULTS).read() if os.path.exists(RESULTS) else "# Benchmark results\n"
        text = replace_section(text, "<!-- fleet -->", "<!-- /fleet -->", section,
                               before=("## Backlog", "BACKLOG"))
        with open(RESULTS, "w") as f:
            f.write(text)
        update_readme()
    return 0


if __name__ == "__main__":
    sys.exit(main())
