"""Disk full: the store refuses with 451 (never a false 250), the server lives on, and every
message it did accept is delivered once space is back. Needs root for a small tmpfs."""
import os
import smtplib
import subprocess

from harness import E2ETest, main, wait_until


class DiskFull(E2ETest):
    def on_small_disk(self, size, sink, **kw):
        """A started backupmx whose store lives on a tmpfs of `size` (needs root)."""
        self.assertEqual(os.geteuid(), 0, "this test mounts a tmpfs: run make test as root")
        store = os.path.join(self.dir, "store")
        os.makedirs(store)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", store], check=True)
        self.stoppers.insert(0, lambda: subprocess.run(["umount", "-l", store]))
        b = self.backupmx({"example.test": f"127.0.0.1:{sink.port}"}, **kw)
        with open(b.config) as f:
            cfg = f.read().replace(f"sqlite:{self.dir}/queue.db", f"sqlite:{store}/queue.db")
        with open(b.config, "w") as f:
            f.write(cfg)
        return store, b.start()

    def test_full_store_answers_451_and_keeps_what_it_took(self):
        sink = self.sink()
        store, b = self.on_small_disk("1m", sink, extra_queue='probe_interval = "1s"\n'
                                      'retry_min = "1h"\nretry_max = "2h"')
        accepted, refused = [], None
        s = b.smtp()
        for i in range(200):
            body = f"Subject: fill-{i:03d}\r\n\r\n" + ("y" * 76 + "\r\n") * 400  # ~31 KB
            try:
                s.sendmail("a@sender.test", ["u@example.test"], body)
                accepted.append(f"fill-{i:03d}")
            except smtplib.SMTPDataError as e:
                refused = (e.smtp_code, e.smtp_error.decode())
                break
        self.assertIsNotNone(refused, "the 1 MB store never filled up")
        self.assertEqual(refused[0], 451, refused)
        self.assertTrue(refused[1].startswith("4.3.0"), refused)
        self.assertGreater(len(accepted), 5)
        self.assertEqual(s.noop()[0], 250)  # the session and the server live on
        self.assertIn("store failure, answering 451", b.log())
        subprocess.run(["mount", "-o", "remount,size=64m", store], check=True)  # space is back
        s.sendmail("a@sender.test", ["u@example.test"], "Subject: after\r\n\r\nafter\r\n")
        accepted.append("after")
        s.quit()
        sink.start()
        wait_until(lambda: b.queue() == [], timeout=60, what="queue drained")
        got = set()
        for m in sink.messages():
            subject = [l for l in m["content"].split(b"\n") if l.startswith(b"Subject: ")][0]
            got.add(subject[9:].decode())
        self.assertEqual(set(accepted) - got, set(), "accepted messages lost")

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


if __name__ == "__main__":
    main()
