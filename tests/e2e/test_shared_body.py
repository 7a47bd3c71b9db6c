"""One DATA to twenty domains is stored once (issue 14 point 6). It used to be stored twenty
times (2 MB became 42 MB of body pieces). Now the per-domain queue entries share one body, which
is removed with the last of them; each primary still gets the message byte for byte. Runs on
both engines."""
import subprocess

from harness import E2ETest, main, wait_until

N = 20


def store_sql(b, sql):
    """One value from the backupmx's store (SQLite file or PostgreSQL database)."""
    if b.store.startswith("sqlite:"):
        import sqlite3
        db = sqlite3.connect(b.store[7:], timeout=10)
        try:
            return db.execute(sql).fetchone()[0]
        finally:
            db.close()
    return int(subprocess.run(["psql", b.store, "-Atqc", sql], capture_output=True, text=True,
                              timeout=60, check=True).stdout.strip())


def body_bytes(b):
    return (store_sql(b, "SELECT coalesce(sum(length(data)), 0) FROM body_pieces")
            + store_sql(b, "SELECT coalesce(sum(length(data)), 0) FROM body_shared"))


class SharedBody(E2ETest):
    def test_one_data_to_20_domains_is_stored_once_and_delivered_20_times(self):
        sink = self.sink()  # every domain's primary, down while the mail comes in
        domains = {f"d{i:02d}.test": f"127.0.0.1:{sink.port}" for i in range(N)}
        b = self.backupmx(domains, extra_smtp="max_message_size = 10485760",
                          extra_queue='probe_interval = "1s"\nretry_min = "1s"\n'
                                      'retry_max = "2s"').start()
        body = "".join(f"{i:07d} " + "b" * 90 + "\r\n" for i in range(20000))  # 2 MB
        message = "Subject: to twenty domains\r\n\r\n" + body
        s = b.smtp()
        s.sendmail("alice@sender.test", [f"bob@d{i:02d}.test" for i in range(N)], message)
        s.quit()
        wait_until(lambda: len(b.queue()) == N, timeout=20, what="twenty queue entries")
        stored = body_bytes(b)
        print(f"\n  one DATA of {len(message) / 1e6:.1f} MB to {N} domains: "
              f"{stored / 1e6:.1f} MB of body stored")
        self.assertLess(stored, len(message) * 1.1, "the body is stored more than once")
        self.assertEqual(store_sql(b, "SELECT count(*) FROM bodies"), 1)
        sink.start()
        wait_until(lambda: len(sink.messages()) == N, timeout=60, what="twenty deliveries")
        for m in sink.messages():
            self.assertIn(b"\n\n" + body.replace("\r\n", "\n").encode(), m["content"],
                          "a copy arrived changed")  # (smtp-sink writes LF line ends)
        wait_until(lambda: b.queue() == [], timeout=20, what="the queue empty")
        self.assertEqual(store_sql(b, "SELECT count(*) FROM bodies"), 0, "the body stayed")
        self.assertEqual(body_bytes(b), 0)

    def test_a_shared_body_stays_while_one_copy_is_still_queued(self):
        sink = self.sink().start()
        down = self.sink()  # one domain's primary stays down
        b = self.backupmx({"up.test": f"127.0.0.1:{sink.port}",
                           "down.test": f"127.0.0.1:{down.port}"},
                          extra_queue='probe_interval = "1s"\nretry_min = "1s"\n'
                                      'retry_max = "2s"').start()
        body = "".join(f"{i:06d} shared\r\n" for i in range(20000))
        s = b.smtp()
        s.sendmail("alice@sender.test", ["a@up.test", "b@down.test"], "Subject: two\r\n\r\n" + body)
        s.quit()
        wait_until(lambda: len(sink.messages()) == 1, timeout=30, what="up.test's copy")
        wait_until(lambda: len(b.queue()) == 1, timeout=10, what="up.test's entry gone")
        self.assertEqual(store_sql(b, "SELECT count(*) FROM bodies"), 1)  # down.test needs it
        down.start()
        wait_until(lambda: len(down.messages()) == 1, timeout=30, what="down.test's copy")
        self.assertIn(b"\n\n" + body.replace("\r\n", "\n").encode(),
                      down.messages()[0]["content"])
        wait_until(lambda: b.queue() == [], timeout=20, what="the queue empty")
        self.assertEqual(store_sql(b, "SELECT count(*) FROM bodies"), 0)


if __name__ == "__main__":
    main()
