"""What happens after an attempt: per-recipient results, backoff, probes, expiry and DSNs."""
import time

from dnsserver import DnsServer
from harness import E2ETest, ScriptedPrimary, free_port, main, wait_until

FAST = 'retry_min = "1s"\nretry_max = "4s"\nprobe_interval = "1s"'


def dsns(sink):
    return [m for m in sink.messages() if m["sender"] == ""]


class TimedPrimary(ScriptedPrimary):
    """A ScriptedPrimary that notes when each connection came (time.monotonic())."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.connected_at = []

    def _serve(self, conn):
        self.connected_at.append(time.monotonic())
        super()._serve(conn)


class RetryBounce(E2ETest):
    def setup_pair(self, extra_queue=FAST, **primary_kw):
        self.primary = self.scripted(**primary_kw)
        self.senders = self.sink().start()  # the primary of sender.test: DSNs arrive here
        self.b = self.backupmx({"example.test": f"127.0.0.1:{self.primary.port}",
                                "sender.test": f"127.0.0.1:{self.senders.port}"},
                               extra_queue=extra_queue)
        return self.primary, self.senders, self.b

    def test_per_recipient_results_and_dsn(self):
        answers = {"ok@example.test": "250 2.1.5 Ok",
                   "temp@example.test": "450 4.2.1 mailbox busy, try later",
                   "perm@example.test": "550 5.1.1 <perm@example.test>: no such user"}
        p, senders, b = self.setup_pair(answer=lambda r: answers[r])
        p.start()
        b.start()
        s = b.smtp()
        s.sendmail("alice@sender.test", list(answers),
                   b"Subject: three recipients\r\nMessage-ID: <three@sender.test>\r\n\r\n"
                   b"SECRET BODY TEXT\r\n")
        s.quit()
        wait_until(lambda: p.transactions, what="first delivery")
        self.assertEqual(p.transactions[0]["rcpts"], ["ok@example.test"])
        wait_until(lambda: dsns(senders), what="a DSN for perm@")
        dsn = dsns(senders)[0]
        self.assertEqual(dsn["recipients"], ["alice@sender.test"])
        c = dsn["content"].decode()
        self.assertIn("multipart/report; report-type=delivery-status", c)
        self.assertIn("Content-Type: message/delivery-status", c)
        self.assertIn("Final-Recipient: rfc822; perm@example.test", c)
        self.assertIn("Action: failed", c)
        self.assertIn("Status: 5.1.1", c)
        self.assertIn("Diagnostic-Code: smtp; 550 5.1.1 <perm@example.test>: no such user", c)
        self.assertIn("Content-Type: text/rfc822-headers", c)
        self.assertIn("Subject: three recipients", c)
        self.assertIn("Message-ID: <three@sender.test>", c)
        self.assertNotIn("SECRET BODY TEXT", c)
        self.assertNotIn("ok@example.test", c.split("Content-Type: text/rfc822-headers")[0])
        self.assertNotIn("temp@example.test", c.split("Content-Type: text/rfc822-headers")[0])
        # The DSN, sent, leaves the queue once its outcome is committed (a moment after).
        q = wait_until(lambda: (lambda q: len(q) == 1 and q)(b.queue()), what="one message left")
        self.assertEqual(q[0]["recipients"], ["temp@example.test"])
        self.assertIn("450 4.2.1", q[0]["last_error"])
        answers["temp@example.test"] = "250 2.1.5 Ok now"
        wait_until(lambda: len(p.transactions) == 2, what="retry of temp@")
        self.assertEqual(p.transactions[1]["rcpts"], ["temp@example.test"])
        wait_until(lambda: b.queue() == [], what="empty queue")
        log = b.log()
        self.assertRegex(log, r"delivered id=\S+ from=<alice@sender.test> to=<ok@example.test>")
        self.assertRegex(log, r"bounced id=\S+ from=<alice@sender.test> to=<perm@example.test> "
                              r"primary=\S+ delay=\S+ attempts=1 reply=\"550 5.1.1")
        self.assertRegex(log, r"deferred id=\S+ from=<alice@sender.test> to=<temp@example.test> "
                              r".*reply=\"450 4.2.1")
        self.assertRegex(log, r"delivered id=\S+ .*to=<temp@example.test> .*attempts=2")
        self.assertEqual(len(dsns(senders)), 1, "exactly one DSN")

    def test_no_dsn_to_the_null_sender(self):
        p, senders, b = self.setup_pair(answer=lambda r: "550 5.1.1 no such user")
        p.start()
        b.start()
        s = b.smtp()
        s.sendmail("", ["gone@example.test"], b"Subject: a bounce itself\r\n\r\nx\r\n")
        s.quit()
        b.wait_log(r"bounced id=\S+ from=<> to=<gone@example.test>")
        wait_until(lambda: b.queue() == [], what="message gone")
        time.sleep(0.5)
        self.assertEqual(senders.messages(), [])

    def test_backoff_starts_at_retry_min_and_doubles_up_to_retry_max(self):
        self.senders = self.sink().start()
        p = TimedPrimary(answer=lambda r: "451 4.3.0 try again later")
        self.stoppers.append(p.stop)
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}",
                           "sender.test": f"127.0.0.1:{self.senders.port}"},
                          extra_queue='retry_min = "2s"\nretry_max = "8s"\nprobe_interval = "1s"')
        p.start()
        b.start()
        s = b.smtp()
        s.sendmail("alice@sender.test", ["u@example.test"], b"Subject: backoff\r\n\r\nx\r\n")
        s.quit()
        seen = {}
        deadline = time.monotonic() + 40
        while len(seen) < 5 and time.monotonic() < deadline:
            q = b.queue()
            if q:
                seen.setdefault(q[0]["attempts"], q[0]["next_attempt_at"])
            time.sleep(0.1)
        # Each attempt is one connection (the primary answers: no probes in between). Attempt
        # k+1 comes backoff(k) after attempt k: retry_min (2s) after the first, then 4s, 8s.
        wait_until(lambda: len(p.connected_at) >= 4, timeout=5, what="4 attempts")
        at = p.connected_at[:4]
        conn_gaps = [round(y - x, 2) for x, y in zip(at, at[1:])]
        for got, want in zip(conn_gaps, [2, 4, 8]):
            self.assertLessEqual(abs(got - want), 0.5, conn_gaps)
        # The queue shows the same, and the cap: next_attempt_at after attempt k is backoff(k)
        # after it, then retry_max (8s).
        gaps = [seen[k] - seen[k - 1] for k in range(2, 5)]
        for got, want in zip(gaps, [4, 8, 8]):  # whole seconds in the store: one either way
            self.assertLessEqual(abs(got - want), 1, (seen, gaps))

    def test_down_primary_probed_then_drained_with_bounded_concurrency(self):
        p, senders, b = self.setup_pair(
            extra_queue=FAST + '\nmax_concurrency = 3\ninitial_concurrency = 1',
            data_delay=0.15)
        b.start()  # the primary is down: its port is bound but not listening
        s = b.smtp()
        for i in range(30):
            s.sendmail("alice@sender.test", [f"u{i}@example.test"], f"Subject: {i}\r\n\r\n{i}\r\n")
        s.quit()
        b.wait_log(r"primary for example.test is down")
        wait_until(lambda: len(b.queue()) == 30, what="30 queued")
        p.start()
        b.wait_log(r"primary for example.test is up \(127.0.0.1\[127.0.0.1\]:\d+\) after \S+ "
                   r"down; sending \d+ queued messages", timeout=10)
        wait_until(lambda: len(p.transactions) == 30, timeout=60, what="30 delivered")
        self.assertLessEqual(p.max_active, 3, "max_concurrency exceeded")
        self.assertGreaterEqual(p.max_active, 2, "never grew past the slow start")
        wait_until(lambda: b.queue() == [], what="empty queue")

    def queue_while_down(self, n, **primary_kw):
        p, senders, b = self.setup_pair(
            extra_queue=FAST + '\nmax_concurrency = 3\ninitial_concurrency = 1', **primary_kw)
        b.start()  # the primary is down
        s = b.smtp()
        for i in range(n):
            s.sendmail("alice@sender.test", [f"u{i}@example.test"], f"Subject: {i}\r\n\r\n{i}\r\n")
        s.quit()
        wait_until(lambda: len(b.queue()) == n, what=f"{n} queued")
        return p, senders, b

    def test_connection_carries_many_messages(self):
        p, senders, b = self.queue_while_down(40)
        p.start()
        wait_until(lambda: len(p.transactions) == 40, timeout=60, what="40 delivered")
        wait_until(lambda: b.queue() == [], what="empty queue")
        carried = [n for n in p.per_connection if n]
        self.assertEqual(sum(carried), 40)
        self.assertLessEqual(len(carried), 10, f"connections not reused: {p.per_connection}")
        self.assertGreaterEqual(max(carried), 5, p.per_connection)
        self.assertLessEqual(p.max_active, 3, "max_concurrency exceeded")
        self.assertEqual(sorted(t["rcpts"][0] for t in p.transactions),
                         sorted(f"u{i}@example.test" for i in range(40)))

    def test_reuse_after_a_refused_transaction_sends_rset(self):
        # Every third recipient is refused: those transactions end at DATA (554), and the next
        # message on the same connection must start with RSET or the primary says 503.
        refused = {f"u{i}@example.test" for i in range(0, 12, 3)}
        p, senders, b = self.queue_while_down(
            12, answer=lambda r: "550 5.1.1 no such user" if r in refused else "250 2.1.5 Ok")
        p.start()
        wait_until(lambda: len(p.transactions) == 8, timeout=60, what="8 delivered")
        wait_until(lambda: b.queue() == [], what="empty queue")
        self.assertGreaterEqual(p.rsets, 1)
        self.assertNotIn("=\"503", b.log())  # no reply="503 nested MAIL" anywhere
        self.assertEqual(len(dsns(senders)), 4)  # one DSN per refused message, nothing else
        self.assertLess(len([n for n in p.per_connection if n]), 8, p.per_connection)

    def test_primary_closing_with_421_loses_nothing(self):
        p, senders, b = self.queue_while_down(20, max_per_connection=3)
        p.start()
        wait_until(lambda: len(p.transactions) == 20, timeout=60, what="20 delivered")
        wait_until(lambda: b.queue() == [], what="empty queue")
        self.assertTrue(all(n <= 3 for n in p.per_connection), p.per_connection)
        self.assertEqual(len({t["rcpts"][0] for t in p.transactions}), 20)
        self.assertEqual(dsns(senders), [])
        self.assertIn("too many messages on one connection", b.log())  # deferred, then retried

    def test_dsn_to_a_sender_domain_not_ours_goes_to_the_relayhost(self):
        # elsewhere.test is not served here and has an MX of its own; with [queue] relayhost
        # set, its DSN goes to the relayhost all the same.
        port = free_port()
        relay = self.sink().start()
        mx = self.sink(host="127.0.0.51", port=port).start()
        dns = DnsServer(self.dir, records=["elsewhere.test. 300 IN MX 10 mx.elsewhere.test.",
                                           "mx.elsewhere.test. 300 IN A 127.0.0.51"]).start()
        self.stoppers.append(dns.stop)
        p = self.scripted(answer=lambda r: "550 5.1.1 <%s>: no such user" % r).start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"},
                          extra_toml=f'[dns]\nresolver = "{dns.address}"\n'
                                     f'[delivery]\nport = {port}',
                          extra_queue=FAST + f'\nrelayhost = "127.0.0.1:{relay.port}"').start()
        s = b.smtp()
        s.sendmail("alice@elsewhere.test", ["gone@example.test"],
                   b"Subject: to be bounced\r\n\r\nx\r\n")
        s.quit()
        dsn = wait_until(lambda: dsns(relay), what="the DSN at the relayhost")[0]
        self.assertEqual(dsn["recipients"], ["alice@elsewhere.test"])
        c = dsn["content"].decode()
        self.assertIn("Final-Recipient: rfc822; gone@example.test", c)
        self.assertIn("Status: 5.1.1", c)
        wait_until(lambda: b.queue() == [], what="the DSN gone from the queue")
        self.assertEqual(mx.messages(), [])  # not by elsewhere.test's MX
        self.assertRegex(b.log(), r"delivered id=\S+ from=<> to=<alice@elsewhere.test> "
                                  r".*primary=127.0.0.1\[127.0.0.1\]:%d" % relay.port)

    def test_expiry_sends_dsn_after_max_age(self):
        p, senders, b = self.setup_pair(extra_queue=FAST + '\nmax_age = "3s"')
        b.start()  # primary never comes up
        s = b.smtp()
        s.sendmail("alice@sender.test", ["u@example.test", "v@example.test"],
                   b"Subject: will expire\r\n\r\nx\r\n")
        s.sendmail("", ["w@example.test"], b"Subject: null sender expires silently\r\n\r\nx\r\n")
        s.quit()
        wait_until(lambda: dsns(senders), timeout=20, what="expiry DSN")
        c = dsns(senders)[0]["content"].decode()
        self.assertIn("Status: 4.4.7", c)
        self.assertIn("Final-Recipient: rfc822; u@example.test", c)
        self.assertIn("Final-Recipient: rfc822; v@example.test", c)
        self.assertIn("delivery time expired", c)
        self.assertIn("Subject: will expire", c)
        wait_until(lambda: b.queue() == [], what="queue empty after expiry")
        log = b.log()
        self.assertRegex(log, r"expired id=\S+ from=<alice@sender.test> to=<u@example.test>,"
                              r"<v@example.test> domain=example.test age=\S+ attempts=\d+")
        self.assertIn("(null sender: no DSN)", log)
        self.assertEqual(len(dsns(senders)), 1)

    def test_default_max_age_is_14_days(self):
        p, senders, b = self.setup_pair(extra_queue='probe_interval = "1s"')
        b.start()
        s = b.smtp()
        s.sendmail("alice@sender.test", ["u@example.test"], b"Subject: old\r\n\r\nx\r\n")
        s.quit()
        b.wait_log(r"deferred id=")
        b.stop()
        b.env["BACKUPMX_TIME_OFFSET"] = str(13 * 86400)  # 13 days later: still kept
        b.start()
        time.sleep(1.5)
        self.assertEqual(len(b.queue()), 1)
        self.assertEqual(dsns(senders), [])
        b.stop()
        b.env["BACKUPMX_TIME_OFFSET"] = str(14 * 86400 + 60)  # past 14 days: DSN, gone
        b.start()
        wait_until(lambda: dsns(senders), what="DSN after 14 days")
        wait_until(lambda: b.queue() == [], what="queue empty")
        self.assertIn("after 14d in queue", dsns(senders)[0]["content"].decode())


if __name__ == "__main__":
    main()
