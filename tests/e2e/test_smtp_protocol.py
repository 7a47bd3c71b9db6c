"""The SMTP server: commands, relay control, every limit at the edge and past it, timeouts."""
import os
import resource
import socket
import time

from harness import E2ETest, Raw, main, wait_until

LIMITS = """max_message_size = 1048576
max_recipients = 5
command_timeout = "2s"
data_timeout = "2s"
max_errors = 6"""


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Protocol(E2ETest):
    def setUp(self):
        super().setUp()
        self.primary = self.scripted().start()
        self.b = self.backupmx({"example.test": f"127.0.0.1:{self.primary.port}"},
                               extra_smtp=LIMITS).start()

    def session(self, mail=True):
        r = Raw(self.b.port)
        self.assertTrue(r.reply().startswith("220 mx2.test.example ESMTP"))
        self.assertTrue(r.cmd("EHLO client.test").startswith("250-"))
        if mail:
            self.assertTrue(r.cmd("MAIL FROM:<s@sender.test>").startswith("250"))
        return r

    def test_ehlo_advertises_extensions(self):
        r = Raw(self.b.port)
        r.reply()
        ehlo = r.cmd("EHLO client.test").split("\n")
        self.assertEqual(ehlo[0], "250-mx2.test.example")
        for ext in ("PIPELINING", "SIZE 1048576", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"):
            self.assertTrue(any(l[4:] == ext for l in ehlo), (ext, ehlo))
        self.assertTrue(r.cmd("HELO client.test").startswith("250 mx2.test.example"))
        self.assertTrue(r.cmd("NOOP").startswith("250 2.0.0"))
        self.assertTrue(r.cmd("VRFY postmaster").startswith("252 2.5.2"))
        self.assertTrue(r.cmd("HELP").startswith("214"))
        self.assertTrue(r.cmd("EXPN list").startswith("502 5.5.1"))
        self.assertTrue(r.cmd("FOOBAR").startswith("500 5.5.2"))
        self.assertTrue(r.cmd("QUIT").startswith("221 2.0.0"))

    def test_relay_control_only_our_domains_exactly(self):
        r = self.session()
        for rcpt in ("u@example.test", "u@EXAMPLE.Test", "u@example.test."):
            self.assertTrue(r.cmd(f"RCPT TO:<{rcpt}>").startswith("250 2.1.5"), rcpt)
        for rcpt in ("u@other.test", "u@sub.example.test", "u@example.test.evil.test",
                     "u@xexample.test", "u@[127.0.0.1]", "<@example.test:u@other.test"):
            rc = rcpt if rcpt.startswith("<") else f"<{rcpt}>"
            reply = r.cmd(f"RCPT TO:{rc}>" if rcpt.startswith("<") else f"RCPT TO:{rc}")
            self.assertTrue(reply.startswith("550 5.7.1"), (rcpt, reply))
            self.assertIn("Relay access denied", reply)
        self.assertRegex(self.b.log(), r"reject RCPT from \[127.0.0.1\] .*to=<u@other.test>: 550 5.7.1")

    def test_command_sequence_errors(self):
        r = Raw(self.b.port)
        r.reply()
        self.assertTrue(r.cmd("MAIL FROM:<a@b.test>").startswith("503 5.5.1"))
        r.cmd("EHLO c.test")
        self.assertTrue(r.cmd("RCPT TO:<u@example.test>").startswith("503 5.5.1"))
        self.assertTrue(r.cmd("DATA").startswith("503 5.5.1"))
        r.cmd("MAIL FROM:<a@b.test>")
        self.assertTrue(r.cmd("MAIL FROM:<a@b.test>").startswith("503 5.5.1"))
        self.assertTrue(r.cmd("DATA").startswith("554 5.5.1"))
        self.assertTrue(r.cmd("RSET").startswith("250"))
        r = Raw(self.b.port)  # a fresh session: the one above is near smtp.max_errors
        r.reply()
        r.cmd("EHLO c.test")
        self.assertTrue(r.cmd("MAIL FROM:a@b.test").startswith("501 5.1.7"))
        self.assertTrue(r.cmd("MAIL FROM:<a@b.test> FOO=bar").startswith("555 5.5.4"))
        self.assertTrue(r.cmd("EHLO").startswith("501 5.5.4"))

    def test_command_line_limit_512_at_and_past(self):
        r = self.session(mail=False)
        # "NOOP " + padding + CRLF = exactly 512 octets: accepted
        self.assertTrue(r.cmd("NOOP " + "x" * (512 - 7)).startswith("250"))
        self.assertTrue(r.cmd("NOOP " + "x" * (512 - 6)).startswith("500 5.5.2"))
        r.send(b"NOOP " + b"y" * 200000 + b"\r\n")  # far past it: refused, not buffered
        self.assertTrue(r.reply().startswith("500 5.5.2"))
        self.assertTrue(r.cmd("NOOP").startswith("250"), "session goes on after the refusal")

    def test_text_line_limit_1000_at_and_past(self):
        r = self.session()
        r.cmd("RCPT TO:<u@example.test>")
        self.assertTrue(r.cmd("DATA").startswith("354"))
        r.send(b"Subject: ok\r\n\r\n" + b"a" * 998 + b"\r\n.\r\n")
        self.assertTrue(r.reply().startswith("250 2.0.0"))
        r.cmd("MAIL FROM:<s@sender.test>")
        r.cmd("RCPT TO:<u@example.test>")
        r.cmd("DATA")
        r.send(b"Subject: long\r\n\r\n" + b"a" * 999 + b"\r\n.\r\n")
        reply = r.reply()
        self.assertTrue(reply.startswith("554 5.5.2"), reply)
        self.assertIn("1000", reply)
        wait_until(lambda: len(self.primary.transactions) == 1, what="one delivery")
        time.sleep(0.3)
        self.assertEqual(len(self.primary.transactions), 1)

    def test_bare_lf_and_bare_cr_refused(self):
        for body in (b"Subject: x\r\n\r\nbare\nlf\r\n.\r\n", b"Subject: x\r\n\r\nbare\rcr\r\n.\r\n",
                     b"Subject: x\nbare lf in header\r\n\r\n.\r\n"):
            r = self.session()
            r.cmd("RCPT TO:<u@example.test>")
            r.cmd("DATA")
            r.send(body)
            reply = r.reply()
            self.assertTrue(reply.startswith("550 5.5.2"), (body, reply))
            self.assertTrue(r.cmd("NOOP").startswith("250"))
            r.close()
        self.assertEqual(self.b.queue(), [])

    def test_smtp_smuggling_variants_are_one_refused_message(self):
        variants = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r.\n", b"\r\n.\n", b"\n.\r", b"\r\n.\r"]
        for v in variants:
            r = self.session()
            r.cmd("RCPT TO:<u@example.test>")
            r.cmd("DATA")
            smuggled = (b"Subject: outer\r\n\r\nhello" + v +
                        b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\n"
                        b"DATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n")
            r.send(smuggled)
            reply = r.reply()
            self.assertTrue(reply.startswith("550 5.5.2"), (v, reply))
            self.assertTrue(r.cmd("NOOP").startswith("250 2.0.0"), v)  # nothing else was run
            r.close()
        time.sleep(0.3)
        self.assertEqual(self.b.queue(), [])
        self.assertEqual(self.primary.transactions, [])
        self.assertNotIn("victim@example.test", self.b.log().replace("to=<u@", ""))

    def test_size_parameter_and_oversized_message(self):
        r = self.session(mail=False)
        self.assertTrue(r.cmd("MAIL FROM:<s@sender.test> SIZE=1048576").startswith("250"))
        r.cmd("RSET")
        reply = r.cmd("MAIL FROM:<s@sender.test> SIZE=1048577")
        self.assertTrue(reply.startswith("552 5.3.4"), reply)
        self.assertIn("max_message_size", reply)
        # A client that lies about SIZE: 40 MB against a 1 MB limit, refused without holding it.
        r.cmd("MAIL FROM:<s@sender.test>")
        r.cmd("RCPT TO:<u@example.test>")
        r.cmd("DATA")
        before = rss_kb(self.b.proc.pid)
        line = b"z" * 998 + b"\r\n"
        chunk = line * 1000
        for _ in range(40):
            r.send(chunk)
        r.send(b".\r\n")
        reply = r.reply()
        self.assertTrue(reply.startswith("552 5.3.4"), reply)
        grown = rss_kb(self.b.proc.pid) - before
        self.assertLess(grown, 16 * 1024, f"RSS grew {grown} kB for a refused 40 MB message")
        # Exactly at the limit is fine: the body (without our Received:) is 1048576 octets.
        r.cmd("MAIL FROM:<s@sender.test>")
        r.cmd("RCPT TO:<u@example.test>")
        r.cmd("DATA")
        exact = line * (1048576 // 1000) 
        exact += b"q" * (1048576 - len(exact) - 2) + b"\r\n"
        self.assertEqual(len(exact), 1048576)
        r.send(exact + b".\r\n")
        self.assertTrue(r.reply().startswith("250 2.0.0"))
        r.cmd("MAIL FROM:<s@sender.test>")
        r.cmd("RCPT TO:<u@example.test>")
        r.cmd("DATA")
        r.send(exact + b"x\r\n.\r\n")
        self.assertTrue(r.reply().startswith("552 5.3.4"))

    def test_recipient_limit_at_and_past(self):
        r = self.session()
        for i in range(5):
            self.assertTrue(r.cmd(f"RCPT TO:<u{i}@example.test>").startswith("250"))
        reply = r.cmd("RCPT TO:<u5@example.test>")
        self.assertTrue(reply.startswith("452 4.5.3"), reply)
        self.assertIn("max_recipients", reply)
        r.cmd("DATA")
        r.send(b"Subject: five\r\n\r\nfive\r\n.\r\n")
        self.assertTrue(r.reply().startswith("250"))
        wait_until(lambda: self.primary.transactions, what="delivery")
        self.assertEqual(len(self.primary.transactions[0]["rcpts"]), 5)

    def test_idle_timeouts_command_and_data(self):
        r = Raw(self.b.port)
        r.reply()
        t0 = time.monotonic()
        reply = r.reply()  # say nothing: the server must give up after command_timeout (2s)
        self.assertTrue(reply.startswith("421 4.4.2"), reply)
        self.assertLess(time.monotonic() - t0, 10)
        self.assertEqual(r.reply(), "")  # and close
        r = self.session()
        r.cmd("RCPT TO:<u@example.test>")
        r.cmd("DATA")
        r.send(b"Subject: slow\r\n\r\npartial")
        reply = r.reply()
        self.assertTrue(reply.startswith("421 4.4.2"), reply)
        self.assertEqual(self.b.queue(), [])

    def test_too_many_errors_drops_session(self):
        r = Raw(self.b.port)
        r.reply()
        replies = [r.cmd("BOGUS") for _ in range(5)]
        self.assertTrue(all(x.startswith("500") for x in replies))
        self.assertTrue(r.cmd("BOGUS").startswith("500"))  # the 6th error (smtp.max_errors = 6)
        last = r.reply()
        self.assertTrue(last.startswith("421 4.7.0"), last)
        self.assertIn("max_errors", last)
        self.assertEqual(r.reply(), "")

    def test_smtputf8_addresses(self):
        r = self.session(mail=False)
        reply = r.cmd("MAIL FROM:<j\u00f6rg@sender.test>")
        self.assertTrue(reply.startswith("553 5.6.7"), reply)
        self.assertTrue(r.cmd("MAIL FROM:<j\u00f6rg@sender.test> SMTPUTF8").startswith("250"))
        self.assertTrue(r.cmd("RCPT TO:<\u7528\u6237@example.test>").startswith("250"))
        r.cmd("DATA")
        r.send("Subject: \u00fcnicode\r\n\r\nbody\r\n.\r\n".encode())
        self.assertTrue(r.reply().startswith("250"))
        wait_until(lambda: self.primary.transactions, what="delivery")
        t = self.primary.transactions[0]
        self.assertIn("SMTPUTF8", t["mail"])
        self.assertEqual(t["rcpts"], ["\u7528\u6237@example.test"])

    def test_pipelined_commands_answered_in_order(self):
        r = Raw(self.b.port)
        r.reply()
        r.cmd("EHLO c.test")
        r.send(b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<a@example.test>\r\n"
               b"RCPT TO:<b@other.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n")
        got = [r.reply() for _ in range(5)]
        self.assertEqual([g[:3] for g in got], ["250", "250", "550", "250", "354"])
        r.send(b"Subject: p\r\n\r\npipelined\r\n.\r\nQUIT\r\n")
        self.assertTrue(r.reply().startswith("250 2.0.0"))
        self.assertTrue(r.reply().startswith("221"))
        wait_until(lambda: self.primary.transactions, what="delivery")
        self.assertEqual(self.primary.transactions[0]["rcpts"], ["a@example.test", "c@example.test"])


class Concurrency(E2ETest):
    def test_thousands_of_sessions_and_a_slow_client_blocks_nobody(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
        primary = self.scripted().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{primary.port}"},
                          extra_smtp="max_connections = 2002").start()
        slow = Raw(b.port)
        slow.reply()
        slow.cmd("EHLO slow.test")
        slow.cmd("MAIL FROM:<slow@sender.test>")
        slow.cmd("RCPT TO:<u@example.test>")
        slow.cmd("DATA")
        slow.send(b"Subject: slow\r\n\r\nhalf a message")  # and stall, mid-DATA
        socks = []
        for _ in range(2000):
            s = socket.create_connection(("127.0.0.1", b.port), timeout=30)
            socks.append(s)
        banners = 0
        for s in socks:
            if s.recv(512).startswith(b"220 "):
                banners += 1
        self.assertEqual(banners, 2000)
        fast = b.smtp()  # session 2002: the last one smtp.max_connections allows
        over = socket.create_connection(("127.0.0.1", b.port), timeout=30)
        self.assertTrue(over.recv(512).startswith(b"421 4.7.0"))  # one past the limit
        over.close()
        fast.sendmail("fast@sender.test", ["u@example.test"], b"Subject: fast\r\n\r\nfast\r\n")
        fast.quit()
        wait_until(lambda: primary.transactions, what="fast message delivered")
        self.assertIn(b"fast", primary.transactions[0]["data"])
        slow.send(b" finished\r\n.\r\n")
        self.assertTrue(slow.reply().startswith("250"))
        for s in socks:
            s.close()
        wait_until(lambda: len(primary.transactions) == 2, what="slow message delivered")


if __name__ == "__main__":
    main()
