"""Store and forward: mail waits while the primary is down and leaves, intact, when it is back."""
import time

from harness import E2ETest, Raw, main, swaks, vm_hwm_mb, wait_until


def unstuff(data):
    """DATA bytes as sent on the wire -> message bytes (drop terminator, undo dot-stuffing)."""
    assert data.endswith(b"\r\n.\r\n")
    lines = data[:-3].split(b"\r\n")
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines)


def strip_field(msg, name):
    assert msg.startswith(name), msg[:80]
    end = msg.index(b"\r\n", 0)
    while msg[end + 2:end + 3] in (b"\t", b" "):
        end = msg.index(b"\r\n", end + 2)
    return msg[end + 2:]


def strip_our_received(msg):
    """Our Received-SPF: (RFC 7208 9.1, above Received:) and Received: fields, then the message."""
    return strip_field(strip_field(msg, b"Received-SPF: "), b"Received: from ")


class Delivery(E2ETest):
    def test_waits_while_primary_down_then_delivers_to_smtp_sink(self):
        sink = self.sink()  # created (port chosen) but not started: the primary is down
        b = self.backupmx({"example.test": f"127.0.0.1:{sink.port}"},
                          extra_queue='probe_interval = "1s"\nretry_min = "1h"\nretry_max = "2h"').start()
        code, out = swaks(b.port, "--from", "alice@sender.test", "--to", "bob@example.test",
                          "--header", "Subject: via swaks", "--body", "first message")
        self.assertEqual(code, 0, out)
        self.assertRegex(out, r"250 2\.0\.0 Ok: queued as [0-9A-F]{16}")
        s = b.smtp()
        s.sendmail("carol@sender.test", ["dave@EXAMPLE.test", "erin@example.test"],
                   b"Subject: via smtplib\r\n\r\nsecond message\r\n")
        s.quit()
        b.wait_log(r"deferred id=\S+ .*error=\"connect to .*refused")
        q = wait_until(lambda: len(b.queue()) == 2 and b.queue(), what="two queued")
        for row in q:
            for key in ("id", "domain", "sender", "recipients", "size", "received_at",
                        "attempts", "next_attempt_at", "last_error"):
                self.assertIn(key, row)
            self.assertEqual(row["domain"], "example.test")
        by_sender = {r["sender"]: r for r in q}
        self.assertEqual(by_sender["carol@sender.test"]["recipients"],
                         ["dave@example.test", "erin@example.test"])
        text = b.cli("queue", "list").stdout
        self.assertIn("from=<alice@sender.test> to=<bob@example.test>", text)
        self.assertIn("2 messages", text)

        sink.start()  # the primary comes back: the probe sees it and everything leaves
        b.wait_log(r"primary for example.test is up")
        wait_until(lambda: len(sink.messages()) == 2, what="two messages at the sink")
        wait_until(lambda: b.queue() == [], what="empty queue")
        got = {m["sender"]: m for m in sink.messages()}
        self.assertEqual(got["alice@sender.test"]["recipients"], ["bob@example.test"])
        self.assertEqual(got["carol@sender.test"]["recipients"],
                         ["dave@example.test", "erin@example.test"])
        self.assertIn(b"second message", got["carol@sender.test"]["content"])
        self.assertIn(b"by mx2.test.example (backupmx) with ESMTP id",
                      got["alice@sender.test"]["content"])
        log = b.log()
        self.assertRegex(log, r"accepted id=[0-9A-F]{16} from=<carol@sender.test> "
                              r"to=<dave@example.test>,<erin@example.test> size=\d+ "
                              r"domain=example.test client=client.test.example\[127.0.0.1\]")
        self.assertRegex(log, r"delivered id=\S+ from=<carol@sender.test> to=<dave@example.test> "
                              r"primary=127.0.0.1\[127.0.0.1\]:\d+ delay=\S+ attempts=\d+ tls=\"none\" "
                              r"reply=\"250")
        self.assertEqual(b.cli("queue", "list").stdout.strip(), "Mail queue is empty")

    def test_body_and_envelope_byte_for_byte_with_pipelining(self):
        primary = self.scripted().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{primary.port}"}).start()
        body = (b"Subject: exact bytes\r\nX-Eight: caf\xc3\xa9\r\n\r\n"
                b".leading dot\r\n..two dots\r\n.\r\n \r\ntrailing space \r\n"
                + b"x" * 998 + b"\r\n\r\n\r\nlast line\r\n")
        r = Raw(b.port)
        r.reply()
        r.cmd("EHLO raw.test")
        self.assertTrue(r.cmd("MAIL FROM:<Sender.Mixed@Sender.Test> BODY=8BITMIME").startswith("250"))
        self.assertTrue(r.cmd("RCPT TO:<one@example.test>").startswith("250"))
        self.assertTrue(r.cmd("RCPT TO:<two@example.test>").startswith("250"))
        self.assertTrue(r.cmd("DATA").startswith("354"))
        stuffed = b"\r\n".join(b"." + l if l.startswith(b".") else l for l in body.split(b"\r\n"))
        r.send(stuffed + b".\r\n")
        self.assertTrue(r.reply().startswith("250 2.0.0 Ok: queued as"))
        r.cmd("QUIT")
        wait_until(lambda: primary.transactions, what="delivery")
        t = primary.transactions[0]
        self.assertEqual(t["mail"].split()[0], "<Sender.Mixed@sender.test>")
        self.assertIn("BODY=8BITMIME", t["mail"])
        self.assertEqual(t["rcpts"], ["one@example.test", "two@example.test"])
        self.assertEqual(strip_our_received(unstuff(t["data"])), body)
        self.assertGreaterEqual(primary.reads_with_mail_and_data, 1, "PIPELINING not used")

    def test_without_pipelining_one_command_at_a_time(self):
        primary = self.scripted(pipelining=False).start()
        b = self.backupmx({"example.test": f"127.0.0.1:{primary.port}"}).start()
        s = b.smtp()
        s.sendmail("a@sender.test", ["x@example.test"], b"Subject: s\r\n\r\nno pipelining\r\n")
        s.quit()
        wait_until(lambda: primary.transactions, what="delivery")
        self.assertEqual(primary.reads_with_mail_and_data, 0)
        self.assertIn(b"no pipelining", primary.transactions[0]["data"])

    def test_recipients_split_by_domain_to_each_primary(self):
        p1 = self.sink().start()
        p2 = self.sink().start()
        b = self.backupmx({"one.test": f"127.0.0.1:{p1.port}",
                           "two.test": f"[127.0.0.1]:{p2.port}"}).start()
        s = b.smtp()
        s.sendmail("a@sender.test", ["x@one.test", "y@two.test", "z@one.test"],
                   b"Subject: split\r\n\r\nsplit\r\n")
        s.quit()
        wait_until(lambda: len(p1.messages()) == 1 and len(p2.messages()) == 1, what="both")
        self.assertEqual(p1.messages()[0]["recipients"], ["x@one.test", "z@one.test"])
        self.assertEqual(p2.messages()[0]["recipients"], ["y@two.test"])

    def test_queue_flush_and_delete(self):
        sink = self.sink()
        b = self.backupmx({"example.test": f"127.0.0.1:{sink.port}"},
                          extra_queue='probe_interval = "1h"\nretry_min = "1h"\nretry_max = "2h"').start()
        s = b.smtp()
        for i in range(3):
            s.sendmail("a@sender.test", [f"u{i}@example.test"], f"Subject: {i}\r\n\r\n{i}\r\n")
        s.quit()
        b.wait_log(r"primary for example.test is down")
        # The first attempt found the primary down; the others wait for the next probe (1h).
        wait_until(lambda: len(b.queue()) == 3, what="three queued")
        victim = b.queue()[0]["id"]
        self.assertIn(f"deleted {victim}", b.cli("queue", "delete", victim).stdout)
        self.assertEqual(b.cli("queue", "delete", victim, check=False).returncode, 1)
        self.assertEqual(len(b.queue()), 2)
        sink.start()
        time.sleep(1.0)
        self.assertEqual(len(sink.messages()), 0, "nothing should move before the flush")
        out = b.cli("queue", "flush", "example.test").stdout
        self.assertTrue(out.startswith("ok"), out)
        wait_until(lambda: len(sink.messages()) == 2, what="flushed mail")
        wait_until(lambda: b.queue() == [], what="empty queue")
        self.assertNotIn(victim, " ".join(m["content"].decode() for m in sink.messages()))

    def test_flush_without_server_says_so(self):
        b = self.backupmx({"example.test": "127.0.0.1:9"})
        r = b.cli("queue", "flush", check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("not running", r.stderr)


class LargeBodies(E2ETest):
    def big_body(self, mb):
        # Lines that start with dots, of every length, so that piece boundaries (64 KiB) fall
        # inside lines, on CRLFs and just before dots to stuff.
        lines, size, i = [], 0, 0
        while size < mb * 1024 * 1024:
            line = b"." * (i % 3) + (b"%07d" % i) + b"x" * (i * 37 % 900)
            lines.append(line)
            size += len(line) + 2
            i += 1
        return b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"

    def test_large_message_leaves_intact_without_being_held_whole(self):
        primary = self.scripted()
        b = self.backupmx({"example.test": f"127.0.0.1:{primary.port}"},
                          extra_smtp="max_message_size = 52428800",
                          extra_queue='probe_interval = "1s"').start()
        body = self.big_body(12)
        s = b.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test"], body)
        s.quit()
        wait_until(lambda: len(b.queue()) == 1, what="queued")
        peak_mb = vm_hwm_mb(b.proc.pid)  # taking it in went by a spool file
        self.assertLess(peak_mb, 20, f"peak RSS {peak_mb:.1f} MB while taking a 12 MB body")
        # A fresh process delivers it: whatever it holds at its peak is the delivery's doing.
        b.stop()
        b.start()
        primary.start()
        wait_until(lambda: primary.transactions, timeout=60, what="delivery")
        b.wait_log(r"delivered id=")
        got = strip_our_received(unstuff(primary.transactions[0]["data"]))
        self.assertEqual(len(got), len(body))
        self.assertEqual(got, body)
        peak_mb = vm_hwm_mb(b.proc.pid)
        self.assertLess(peak_mb, 20, f"peak RSS {peak_mb:.1f} MB while sending a 12 MB body")

    def test_large_message_for_two_domains_reaches_both_intact(self):
        one, two = self.scripted().start(), self.scripted().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{one.port}",
                           "other.test": f"127.0.0.1:{two.port}"},
                          extra_smtp="max_message_size = 52428800").start()
        body = self.big_body(3)
        s = b.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test", "carol@other.test"], body)
        s.quit()
        wait_until(lambda: one.transactions and two.transactions, timeout=60, what="both")
        for p in (one, two):
            self.assertEqual(strip_our_received(unstuff(p.transactions[0]["data"])), body)


if __name__ == "__main__":
    main()
