"""Durability at the system-call level: "250 queued as" is written to a client only after the store
was made durable with that message in it, proven from an strace of the running server.

A kill -9 keeps the page cache, so test_crash passes even with no fsync at all. Here backupmx runs
under `strace -f`, several SMTP sessions send at once (bodies above the 64 KiB piece size too, so
the spool path is used), and fsync_trace.py checks that every 250 the clients got follows an
fsync/fdatasync of the SQLite database or its WAL that began after that message's final dot was
read from its socket and after its row was written to the WAL, and returned before the 250 was
written. On the PostgreSQL store the fsync is
the database server's: there every 250 must follow a COMMIT round trip on a database socket begun
after the dot. The checker's own tests are in test_fsync_checker.py.
"""
import os
import re
import shutil
import signal
import smtplib
import subprocess
import threading
import time
import unittest
import urllib.parse

import fsync_trace
from harness import BIN, Backupmx, E2ETest, free_port, main, pg_admin_url, release_port, \
    wait_until

SESSIONS = 8
PER_SESSION = 5
SENT = SESSIONS * PER_SESSION
# Sizes around the body piece (64 KiB): a body goes to the spool once it is two pieces long.
SIZES = [2_000, 200_000, 8_000, 600_000, 70_000]
SPOOLED = 2 * 64 * 1024
# pwrite64: SQLite's WAL frames (a sync counts only after the message's row was written).
TRACED = ("read,recvfrom,recvmsg,write,sendto,sendmsg,writev,fsync,fdatasync,openat,close,"
          "accept,accept4,dup,dup2,dup3,fcntl,connect,pwrite64")


class TracedBackupmx(Backupmx):
    """backupmx serve, started under strace -f; its log and readiness as Backupmx's."""

    def __init__(self, *a, trace, **kw):
        super().__init__(*a, **kw)
        self.trace = trace

    def start(self, wait=True):
        with open(self.config) as f:  # the ports it listens on, held by free_port until now
            for port in re.findall(r":(\d+)\"", f.read()):
                release_port(port)
        self.logf = open(self.log_path, "ab")
        # -s 65536: the session reads 8 KiB at a time, so no read is cut and every final dot is
        # seen in the bytes (the checker copes with cuts, but then guesses conservatively).
        self.proc = subprocess.Popen(
            [shutil.which("strace"), "-f", "-tt", "-T", "-s", "65536", "-e", "trace=" + TRACED,
             "-o", self.trace, BIN, "serve", "--config", self.config],
            stdout=self.logf, stderr=subprocess.STDOUT, env=self.env)
        wait_until(lambda: self.proc.poll() is not None or "backupmx ready" in self.log(),
                   timeout=60, what="backupmx under strace to start")
        assert self.proc.poll() is None, "backupmx exited at start:\n" + self.log()
        return self

    def server_pid(self):
        """The traced backupmx itself (strace's child)."""
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                 text=True, timeout=10).stdout
            return int(out.split()[0])

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc and self.proc.poll() is None:
            try:
                os.kill(self.server_pid(), sig)  # strace ends when its tracee does
            except (OSError, IndexError, ValueError):
                self.proc.kill()
            try:
                self.proc.wait(timeout)
            except Exception:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("backupmx under strace did not stop")
        if self.proc:
            self.logf.close()
        return self.proc.returncode if self.proc else None


def send_all(port, errors):
    """SESSIONS concurrent sessions of PER_SESSION messages; the queue ids the 250s named."""
    ids, lock = [], threading.Lock()

    def session(n):
        try:
            s = smtplib.SMTP("127.0.0.1", port, timeout=120)
            s.ehlo("trace.test")
            for i in range(PER_SESSION):
                tag = f"T{n}-{i}"
                size = SIZES[(n + i) % len(SIZES)]
                line = f"{tag} {'x' * 70}\r\n"
                body = (f"Subject: {tag}\r\nMessage-ID: <{tag}@trace.test>\r\n\r\n"
                        + line * (size // len(line) + 1))
                s.mail("s@sender.test")
                s.rcpt(f"u{n}@example.test")
                code, msg = s.data(body)
                if code != 250:
                    raise AssertionError(f"{tag}: {code} {msg}")
                with lock:
                    ids.append(msg.decode().rsplit("queued as ", 1)[1].strip())
            s.quit()
        except Exception as e:  # reported by the test
            errors.append(f"session {n}: {e!r}")

    threads = [threading.Thread(target=session, args=(n,), daemon=True)
               for n in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return ids


@unittest.skipUnless(shutil.which("strace"), "needs strace (scripts/install-deps.sh)")
class FsyncTrace(E2ETest):
    def run_traced(self):
        """Sends SENT messages to a traced backupmx (the primary down: they stay queued);
        returns (trace text, the ids the clients got, the server)."""
        trace = os.path.join(self.dir, "strace.log")
        primary = free_port()  # nothing listens: nothing is delivered while we trace
        b = TracedBackupmx(self.dir, {"example.test": f"127.0.0.1:{primary}"}, trace=trace,
                           extra_queue='retry_min = "1h"\nretry_max = "2h"')
        self.stoppers.append(lambda: b.stop(signal.SIGKILL))
        b.start()
        errors = []
        t0 = time.monotonic()
        ids = send_all(b.port, errors)
        self.assertEqual(errors, [])
        self.assertEqual(len(ids), SENT)
        queued = {m["id"] for m in b.queue()}
        self.assertEqual(queued, set(ids), "the queue holds what the clients were told")
        self.assertEqual(b.stop(), 0, "strace (and backupmx) ended cleanly")
        print(f"{SENT} messages in {time.monotonic() - t0:.1f}s under strace; trace "
              f"{os.path.getsize(trace) // 1024} KiB")
        return fsync_trace.load(trace), ids, b

    @unittest.skipIf(pg_admin_url(), "the SQLite store's own syncs (the default store)")
    def test_every_250_follows_a_store_fdatasync_begun_after_its_final_dot(self):
        text, ids, b = self.run_traced()
        db = b.store[len("sqlite:"):]
        rep = fsync_trace.analyse(text, store_path=db)
        self.assertEqual(rep.violations, [], "\n".join(rep.violations[:10]))
        self.assertEqual(rep.checked, SENT, "every 250 sent was found in the trace and checked")
        self.assertEqual(sorted(r.ids for r in rep.replies), sorted(ids))
        self.assertTrue(all(r.dot_seen for r in rep.replies), "every final dot seen in the bytes")
        self.assertEqual(rep.cut_reads, 0)
        spooled = len(re.findall(r"openat\(AT_FDCWD, \"[^\"]*/\.spool-", text))
        big = sum(1 for n in range(SESSIONS) for i in range(PER_SESSION)
                  if SIZES[(n + i) % len(SIZES)] > SPOOLED)
        self.assertGreaterEqual(spooled, big, "the large bodies went through the spool")
        print(f"checked {rep.checked} replies against {rep.syncs} store syncs "
              f"({big} bodies spooled)")
        # The same trace as if the store never synced (PRAGMA synchronous=OFF): every 250 fails.
        bare = fsync_trace.analyse(fsync_trace.without_syncs(text), store_path=db)
        self.assertEqual(len(bare.violations), SENT, "the check catches a store that never syncs")
        self.assertEqual(bare.checked, SENT)

    @unittest.skipUnless(pg_admin_url(), "the PostgreSQL store (BMX_E2E_PG_FILE)")
    def test_every_250_follows_a_postgresql_commit_begun_after_its_final_dot(self):
        text, ids, b = self.run_traced()
        port = urllib.parse.urlsplit(b.store).port or 5432
        rep = fsync_trace.analyse(text, pg_port=port)
        self.assertEqual(rep.violations, [], "\n".join(rep.violations[:10]))
        self.assertEqual(rep.checked, SENT, "every 250 sent was found in the trace and checked")
        self.assertEqual(sorted(r.ids for r in rep.replies), sorted(ids))
        self.assertTrue(all(r.dot_seen for r in rep.replies), "every final dot seen in the bytes")
        print(f"checked {rep.checked} replies against {rep.syncs} COMMIT round trips")
        # A server that answered before its commit: the trace without the COMMIT replies fails.
        lines = [ln for ln in text.splitlines() if "COMMIT\\0" not in ln]
        bare = fsync_trace.analyse("\n".join(lines), pg_port=port)
        self.assertEqual(len(bare.violations), SENT)


if __name__ == "__main__":
    main()
