"""Disk full: the store refuses with 451 (never a false 250), the server lives on, and every
message it did accept is delivered once space is back. Needs root for a small tmpfs."""
import os
import re
import smtplib
import subprocess
import time

from harness import E2ETest, Raw, edit_config, main, wait_until


def subject_list(sink):
    """The Subject of every message the sink received, one per message (duplicates kept)."""
    out = []
    for m in sink.messages():
        for line in m["content"].splitlines():
            if line.startswith(b"Subject: "):
                out.append(line[9:].strip().decode())
                break
    return out


def fill_disk(path):
    """Writes zeros into `path`/filler until the file system under it is full."""
    subprocess.run(["dd", "if=/dev/zero", f"of={os.path.join(path, 'filler')}", "bs=64k"],
                   stderr=subprocess.DEVNULL)


def fill_until_full(test, b, most, body):
    """Sends ~31 KB messages (`body(i)`) on one session until the store refuses one: that must be
    451 4.3.0 with the session alive. Returns the session and the subjects that got 250."""
    accepted, refused = [], None
    s = b.smtp()
    for i in range(most):
        try:
            s.sendmail("a@sender.test", ["u@example.test"], f"Subject: fill-{i:04d}\r\n\r\n" + body(i))
            accepted.append(f"fill-{i:04d}")
        except smtplib.SMTPDataError as e:
            refused = (e.smtp_code, e.smtp_error.decode())
            break
        except smtplib.SMTPServerDisconnected:
            test.fail("the session was dropped: " + b.log()[-2000:])
    test.assertIsNotNone(refused, "the disk never filled up")
    test.assertEqual(refused[0], 451, refused)
    test.assertTrue(refused[1].startswith("4.3.0"), refused)
    test.assertGreater(len(accepted), 5)
    test.assertEqual(s.noop()[0], 250)  # the session and the server live on
    test.assertIn("store failure, answering 451", b.log())
    return s, accepted


class DiskFull(E2ETest):
    def on_small_disk(self, size, sink, **kw):
        """A started backupmx whose store lives on a tmpfs of `size` (needs root)."""
        self.assertEqual(os.geteuid(), 0, "this test mounts a tmpfs: run make test as root")
        store = os.path.join(self.dir, "store")
        os.makedirs(store)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", store], check=True)
        self.stoppers.insert(0, lambda: subprocess.run(["umount", "-l", store]))
        b = self.backupmx({"example.test": f"127.0.0.1:{sink.port}"}, **kw)
        edit_config(b, f"sqlite:{self.dir}/queue.db", f"sqlite:{store}/queue.db")
        return store, b.start()

    def test_full_store_answers_451_and_keeps_what_it_took(self):
        sink = self.sink()
        store, b = self.on_small_disk("1m", sink, extra_queue='probe_interval = "1s"\n'
                                      'retry_min = "1h"\nretry_max = "2h"')
        s, accepted = fill_until_full(self, b, 200, lambda i: ("y" * 76 + "\r\n") * 400)
        subprocess.run(["mount", "-o", "remount,size=64m", store], check=True)  # space is back
        s.sendmail("a@sender.test", ["u@example.test"], "Subject: after\r\n\r\nafter\r\n")
        accepted.append("after")
        s.quit()
        sink.start()
        wait_until(lambda: b.queue() == [], timeout=60, what="queue drained")
        self.assertEqual(set(accepted) - sink.subjects(), set(), "accepted messages lost")

    def test_large_message_on_a_full_disk_gets_451_and_leaves_no_trace(self):
        # Past the first 64 KiB a body goes to a spool file beside the queue while it arrives:
        # a disk that fills then gives 451 at the end of DATA, and the space comes back.
        sink = self.sink().start()
        store, b = self.on_small_disk("2m", sink, extra_smtp="max_message_size = 52428800")
        s = b.smtp()
        big = "Subject: too big for the disk\r\n\r\n" + ("z" * 998 + "\r\n") * 4000  # 4 MB
        with self.assertRaises(smtplib.SMTPDataError) as e:
            s.sendmail("a@sender.test", ["u@example.test"], big)
        self.assertEqual(e.exception.smtp_code, 451)
        self.assertIn("spool write", b.log())
        free = os.statvfs(store)
        self.assertGreater(free.f_bavail * free.f_frsize, 1024 * 1024, "spool space not freed")
        s.sendmail("a@sender.test", ["u@example.test"], "Subject: small\r\n\r\nsmall\r\n")
        s.quit()
        wait_until(lambda: b.queue() == [], timeout=30, what="the small one delivered")
        self.assertEqual(len(sink.messages()), 1)


class FullDiskPrimaryBack(E2ETest):
    """Disk full just as the primary comes back (issue 14 point 4): each delivery's outcome
    cannot be recorded. It used to be retried at retry_min with attempts never growing: each
    message was delivered up to 108 times in 110 s. Now the outcome is kept in memory, delivery
    pauses, only the record is retried, and each message arrives once."""

    def test_deliveries_that_cannot_be_recorded_are_not_repeated(self):
        self.assertEqual(os.geteuid(), 0, "this test mounts a tmpfs: run make test as root")
        store = os.path.join(self.dir, "store")
        os.makedirs(store)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", store], check=True)
        self.stoppers.insert(0, lambda: subprocess.run(["umount", "-l", store]))
        sink = self.sink()  # the primary: down while the mail comes in
        b = self.backupmx({"example.test": f"127.0.0.1:{sink.port}"},
                          extra_queue='probe_interval = "1s"\nretry_min = "1s"\nretry_max = "1s"')
        edit_config(b, f"sqlite:{self.dir}/queue.db", f"sqlite:{store}/queue.db")
        b.start()
        n = 20
        s = b.smtp()
        for i in range(n):
            s.sendmail("a@sender.test", ["u@example.test"],
                       f"Subject: once-{i:02d}\r\n\r\n" + ("x" * 76 + "\r\n") * 100)
        s.quit()
        fill_disk(store)
        sink.start()  # the primary is back, the disk is full
        b.wait_log(r"store failure recording attempt", timeout=30)
        time.sleep(8)  # what used to be eight retry_min rounds of redelivery
        during = subject_list(sink)
        os.remove(os.path.join(store, "filler"))  # space is back
        wait_until(lambda: b.queue() == [], timeout=60, what="the queue drained")
        time.sleep(2)
        subjects = subject_list(sink)
        dupes = {x: subjects.count(x) for x in set(subjects) if subjects.count(x) > 1}
        print(f"\n  {n} messages, disk full with the primary up: {len(during)} delivered while "
              f"the store could not record, {len(subjects)} in all, duplicates {dupes}")
        self.assertEqual(dupes, {}, "delivered more than once")
        self.assertEqual(sorted(set(subjects)), [f"once-{i:02d}" for i in range(n)])
        self.assertIn("delivery pauses until the store records it", b.log())
        self.assertIn("the store records again: delivery resumes", b.log())


class StoreErrorInSession(E2ETest):
    """A store that cannot write while a RCPT is checked (greylisting records the triplet,
    verify caches the answer) fails the command, not the session: 451 4.3.0 at once, logged
    once, and the session goes on (issue 14 point 7: it used to hang until command_timeout)."""

    def rcpts_until_refused(self, b, most, rcpt):
        """RCPTs (new sender each, so each is a new write) until one is not a 4xx/2xx policy
        answer: returns (reply, seconds it took, how many were tried)."""
        r = Raw(b.port, timeout=30)
        r.reply()
        r.cmd("EHLO client.test.example")
        for i in range(most):
            self.assertTrue(r.cmd(f"MAIL FROM:<s{i}@sender.test>").startswith("250"))
            t0 = time.monotonic()
            reply = r.cmd(f"RCPT TO:<{rcpt(i)}>")
            took = time.monotonic() - t0
            if reply.startswith("451 4.3.0"):
                self.assertTrue(r.cmd("RSET").startswith("250"))  # the session lives on
                self.assertTrue(r.cmd("NOOP").startswith("250"))
                r.cmd("QUIT")
                r.close()
                return reply, took, i + 1
            self.assertTrue(reply[:1] in "24", reply)
            r.cmd("RSET")
        self.fail(f"no store error in {most} RCPTs: " + b.log()[-1500:])

    def small_disk_backupmx(self, spec, **kw):
        self.assertEqual(os.geteuid(), 0, "this test mounts a tmpfs: run make test as root")
        store = os.path.join(self.dir, "store")
        os.makedirs(store)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", store], check=True)
        self.stoppers.insert(0, lambda: subprocess.run(["umount", "-l", store]))
        b = self.backupmx({"example.test": spec}, extra_smtp='command_timeout = "60s"', **kw)
        edit_config(b, f"sqlite:{self.dir}/queue.db", f"sqlite:{store}/queue.db")
        return store, b

    def check(self, b, reply, took, n):
        print(f"\n  store error after {n} RCPTs: answered in {took * 1000:.0f} ms: {reply}")
        self.assertLess(took, 2.0, "the 451 came late: the session waited for its deadline")
        self.assertRegex(reply, r"^451 4\.3\.0 mx2\.test\.example .*local error")
        self.assertEqual(len(re.findall(r"store failure in RCPT from \[127\.0\.0\.1\]",
                                        b.log())), 1, "logged once")

    def test_store_full_while_greylisting_answers_451_at_once_and_the_session_lives(self):
        p = self.scripted().start()
        store, b = self.small_disk_backupmx({"primary": f"127.0.0.1:{p.port}",
                                             "greylisting": "X"},
                                            extra_toml='[policy]\ngreylist_delay = "1h"')
        edit_config(b, 'greylisting = "X"', "greylisting = true")
        b.start()
        fill_disk(store)
        self.check(b, *self.rcpts_until_refused(b, 1000, lambda i: "bob@example.test"))

    def test_store_full_while_caching_a_verify_answer_answers_451_at_once(self):
        p = self.scripted().start()  # answers every RCPT 250: each new recipient is cached
        store, b = self.small_disk_backupmx({"primary": f"127.0.0.1:{p.port}",
                                             "recipients": "verify"})
        b.start()
        fill_disk(store)
        self.check(b, *self.rcpts_until_refused(b, 1000, lambda i: f"u{i}@example.test"))


class PgDiskFull(E2ETest):
    """The same promise on a PostgreSQL store whose server runs out of disk: a table that cannot
    grow fails the transaction (451); a WAL write that cannot be made stops the server, which
    the operator starts again once there is space."""

    def test_full_database_disk_answers_451_and_keeps_what_it_took(self):
        import random
        import string
        from harness import free_port
        from pg import PgCluster
        self.assertEqual(os.geteuid(), 0, "this test mounts a tmpfs: run make test as root")
        disk = os.path.join(self.dir, "pgdisk")
        os.makedirs(disk)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60m,mode=0755", "tmpfs", disk],
                       check=True)
        self.stoppers.append(lambda: subprocess.run(["umount", "-l", disk]))
        pg = PgCluster(disk, free_port())
        self.stoppers.append(pg.stop)  # (stopped before the disk goes)
        pg.init()
        pg.configure("max_wal_size = 32MB\nmin_wal_size = 32MB\n")
        pg.start()
        url = pg.url("backupmx") + "?connect_timeout=5"
        sink = self.sink()
        b = self.backupmx({"example.test": f"127.0.0.1:{sink.port}"}, store=url,
                          extra_queue=f'probe_interval = "1s"\nretry_min = "1h"\n'
                                      f'retry_max = "2h"\ncontrol_socket = "{self.dir}/c.sock"')
        b.start()
        rnd = random.Random(7)  # bodies that do not compress: the disk fills for real

        def body(i):
            text = "".join(rnd.choices(string.ascii_letters, k=76 * 400))
            return "\r\n".join(text[j:j + 76] for j in range(0, len(text), 76)) + "\r\n"
        s, accepted = fill_until_full(self, b, 3000, body)
        s.quit()
        subprocess.run(["mount", "-o", "remount,size=512m", disk], check=True)  # space is back
        if not pg.pid() or subprocess.run(["kill", "-0", str(pg.pid())]).returncode != 0:
            pg.start()  # it stopped on a WAL write: the operator starts it again

        def send_after():
            try:
                s = b.smtp()
                s.sendmail("a@sender.test", ["u@example.test"], "Subject: after\r\n\r\nx\r\n")
                s.quit()
                return True
            except (OSError, smtplib.SMTPException):
                return False
        wait_until(send_after, timeout=60, what="a 250 once there is space again")
        accepted.append("after")
        sink.start()
        wait_until(lambda: pg.sql("SELECT count(*) FROM messages", "backupmx") == "0",
                   timeout=120, what="queue drained")
        self.assertEqual(set(accepted) - sink.subjects(), set(), "accepted messages lost")


if __name__ == "__main__":
    main()
