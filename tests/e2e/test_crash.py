"""Durability: every message that got 250 survives kill -9 of the server and reaches the primary."""
import re
import smtplib
import threading
import time

from harness import E2ETest, main, wait_until

SENDERS = 20          # concurrent client threads
PER_SESSION = 10      # messages per SMTP session


class Load:
    """Client threads sending uniquely tagged messages until told to stop or the server dies."""

    def __init__(self, port, prefix, target):
        self.port, self.prefix, self.target = port, prefix, target
        self.accepted, self.uncertain = set(), set()
        self.lock = threading.Lock()
        self.counter = 0
        self.stop = threading.Event()

    def next_tag(self):
        with self.lock:
            if self.counter >= self.target:
                return None
            self.counter += 1
            return f"{self.prefix}-{self.counter:05d}"

    def worker(self):
        while not self.stop.is_set():
            try:
                s = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
                s.ehlo("load.test")
            except OSError:
                return
            for _ in range(PER_SESSION):
                tag = self.next_tag()
                if tag is None or self.stop.is_set():
                    s.close()
                    return
                body = (f"Subject: {tag}\r\nMessage-ID: <{tag}@load.test>\r\n\r\n"
                        + f"{tag} body line\r\n" * 100)
                try:
                    s.sendmail("load@sender.test", [f"u{tag[-1]}@example.test"], body)
                    with self.lock:
                        self.accepted.add(tag)
                except (smtplib.SMTPException, OSError):
                    with self.lock:
                        self.uncertain.add(tag)  # in flight at the kill: may or may not be kept
                    s.close()
                    return
            try:
                s.quit()
            except (smtplib.SMTPException, OSError):
                pass

    def run_async(self):
        self.threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(SENDERS)]
        for t in self.threads:
            t.start()
        return self

    def join(self):
        for t in self.threads:
            t.join(120)


class Crash(E2ETest):
    def test_kill9_under_load_loses_nothing(self):
        sink = self.sink()  # the primary stays down while we load and kill
        b = self.backupmx({"example.test": f"127.0.0.1:{sink.port}"},
                          extra_queue='probe_interval = "1s"\nretry_min = "1h"\nretry_max = "2h"')
        b.start()
        first = Load(b.port, "A", 100000).run_async()
        wait_until(lambda: len(first.accepted) >= 700, timeout=180, what="700 accepted")
        b.kill9()  # mid-load, sessions open, commits in flight
        first.stop.set()
        first.join()
        b.start()  # same store
        second = Load(b.port, "B", 500).run_async()
        second.join()
        accepted = first.accepted | second.accepted
        uncertain = first.uncertain | second.uncertain
        self.assertGreaterEqual(len(accepted), 1000)
        self.assertEqual(len(second.accepted), 500)
        sink.start()
        wait_until(lambda: b.queue() == [], timeout=300, what="queue drained")
        delivered = {}
        for m in sink.messages():
            tag = re.search(rb"Subject: ([AB]-\d{5})", m["content"]).group(1).decode()
            delivered[tag] = delivered.get(tag, 0) + 1
        missing = accepted - set(delivered)
        self.assertEqual(missing, set(), f"{len(missing)} messages got 250 and were lost")
        unknown = set(delivered) - accepted - uncertain
        self.assertEqual(unknown, set(), "delivered messages nobody sent")
        dups = {t for t, n in delivered.items() if n > 1}
        self.assertEqual(dups, set(), "duplicates although nothing was being delivered")
        print(f"accepted={len(accepted)} uncertain={len(uncertain)} "
              f"delivered={len(delivered)} (of the uncertain: {len(uncertain & set(delivered))})")


if __name__ == "__main__":
    main()
