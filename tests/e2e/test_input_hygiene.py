"""Input hygiene (issue 13, point 5) against the real server: a NUL byte in DATA is refused, text a
client sent never reaches a reply or a log line raw, Received: writes an IPv6 client as an IPv6
address literal, Received-SPF keeps a UTF-8 sender, a DSN's Remote-MTA names the primary's host,
and a DSN about an SMTPUTF8 message follows RFC 6533.

Every backupmx here asks a local DNS server (unbound on loopback) so SPF, on by default, is
answered at once and nothing leaves the machine. The checks on what was delivered are functions
(check_*) so the last class can show each one rejects the form the server used to write."""
import re
import smtplib
import socket
import time

from dnsserver import DnsServer
from harness import E2ETest, Raw, free_port, main, store_dump, wait_until

SPF_RECORDS = ['sender.test. 300 IN TXT "v=spf1 ip4:127.0.0.0/8 ip6:::1 -all"']
ONE_ATTEMPT = 'retry_min = "1h"\nretry_max = "2h"'


RAW_CONTROLS = (b"\r", b"\x1b", b"\x00", "\u009b".encode())


def check_no_raw_controls(where, text):
    """No CR, ESC, NUL or C1 CSI from a client in a reply line or the log: they arrive escaped
    (\\x0D) or as '?'."""
    for c in RAW_CONTROLS:
        assert c not in text, f"raw {c!r} in {where}: {text!r}"


def header_field(data, name):
    """The whole (unfolded) first header field `name` of a message, as bytes; None if absent."""
    head = data.split(b"\r\n\r\n", 1)[0]
    m = re.search(rb"^" + re.escape(name.encode()) + rb":[^\r\n]*(?:\r\n[ \t][^\r\n]*)*", head,
                  re.M)
    return None if m is None else re.sub(rb"\r\n([ \t])", rb"\1", m.group(0))


def check_received_ipv6_literal(data):
    """RFC 5321 4.1.3: our Received: names a client on ::1 as [IPv6:::1]."""
    received = header_field(data, "Received")
    assert received is not None, data[:300]
    assert re.match(rb"Received: from \S+ \(\[IPv6:::1\]\)", received), received
    assert b"([::1])" not in data, received


def check_received_spf_utf8_sender(data, sender):
    spf = header_field(data, "Received-SPF")
    assert spf is not None and spf.startswith(b"Received-SPF: pass "), data[:300]
    assert sender.encode() in spf, spf  # "jörg@sender.test" in UTF-8


def check_remote_mta_is_host_name(dsn_text, host):
    lines = re.findall(r"^Remote-MTA:[^\r\n]*", dsn_text, re.M)
    assert lines, dsn_text
    for line in lines:
        assert line == f"Remote-MTA: dns; {host}", line
        assert "[" not in line and "]:" not in line, line


def check_rfc6533_dsn(mail, dsn_text, rcpt):
    """An internationalized DSN: sent with SMTPUTF8, utf-8 text, a utf-8; Final-Recipient,
    message/global-delivery-status and message/global-headers parts."""
    path, *params = mail.split(" ")
    assert path == "<>" and "SMTPUTF8" in params, mail
    assert "Content-Type: message/global-delivery-status" in dsn_text, dsn_text
    assert "Content-Type: message/delivery-status" not in dsn_text, dsn_text
    assert "Content-Type: message/global-headers" in dsn_text, dsn_text
    assert "text/rfc822-headers" not in dsn_text, dsn_text
    assert "Content-Type: text/plain; charset=utf-8" in dsn_text, dsn_text
    assert "charset=us-ascii" not in dsn_text, dsn_text
    assert f"Final-Recipient: utf-8; {rcpt}\r\n" in dsn_text, dsn_text
    assert "rfc822; " + rcpt not in dsn_text, dsn_text


class Hygiene(E2ETest):
    def dns(self, records=SPF_RECORDS):
        d = DnsServer(self.dir, records=records).start()
        self.stoppers.append(d.stop)
        return d

    def server(self, domains, extra_toml="", **kw):
        dns = self.dns()
        return self.backupmx(domains, extra_toml=f'[dns]\nresolver = "{dns.address}"\n' +
                             extra_toml, **kw).start()

    def session(self, b, helo="client.test"):
        r = Raw(b.port, host=b.host)
        self.assertTrue(r.reply().startswith("220 "))
        self.assertTrue(r.cmd("EHLO " + helo).startswith("250-"))
        return r

    # 1 ------------------------------------------------------------------------------------------
    NUL_LINE = b"\x00.\r\n"  # a primary that drops NULs reads this as the end of the data

    def test_nul_in_data_one_550_refusal_no_smuggled_message_queued_or_delivered(self):
        primary = self.scripted().start()
        b = self.server({"example.test": f"127.0.0.1:{primary.port}"})
        r = self.session(b)
        self.assertTrue(r.cmd("MAIL FROM:<s@sender.test>").startswith("250"))
        self.assertTrue(r.cmd("RCPT TO:<u@example.test>").startswith("250"))
        self.assertTrue(r.cmd("DATA").startswith("354"))
        r.send(b"Subject: outer\r\n\r\nhello\r\n" + self.NUL_LINE +
               b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
               b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n")
        reply = r.reply()
        self.assertTrue(reply.startswith("550 5.6.0"), reply)
        self.assertIn("NUL", reply)
        # One reply for all of it: the next one answers our NOOP, not a smuggled MAIL/RCPT/DATA.
        self.assertEqual(r.cmd("NOOP")[:3], "250")
        self.assertTrue(r.cmd("QUIT").startswith("221"))
        r.close()
        time.sleep(0.5)  # what a delivery of either message would have taken
        self.assertEqual(b.queue(), [])
        self.assertEqual(primary.transactions, [])
        self.assertEqual(primary.connections, 0)
        self.assertNotIn("victim", store_dump(b))
        self.assertNotIn("victim", b.log())

    # 2 ------------------------------------------------------------------------------------------
    def test_client_cr_esc_nul_never_raw_in_replies_or_log_and_echoes_escaped(self):
        primary = self.scripted().start()
        b = self.server({"example.test": f"127.0.0.1:{primary.port}"})
        # (commands before, the command, what its reply must start with, the escaped echo)
        cases = [
            ([], b"MAIL FROM:<a@sender.test> X\rFAKE-REPLY", "555 5.5.4",
             "Unsupported MAIL parameter X\\x0DFAKE-REPLY"),
            ([], b"MAIL FROM:<a@sender.test> \x1b[31mRED=1", "555 5.5.4",
             "Unsupported MAIL parameter \\x1B[31MRED"),
            ([], b"MAIL FROM:<a@sender.test> SMTPUTF8 NUL\x00X=1", "555 5.5.4",
             "Unsupported MAIL parameter NUL\\x00X"),
            # U+009B, the one-character CSI (ESC [) in UTF-8: a C1 control, escaped too.
            ([], "MAIL FROM:<a@sender.test> CSI\u009b31M".encode(), "555 5.5.4",
             "Unsupported MAIL parameter CSI\\xC2\\x9B31M"),
            ([b"MAIL FROM:<a@sender.test>"], b"RCPT TO:<u@example.test> X\rFAKE-REPLY",
             "555 5.5.4", "Unsupported RCPT parameter X\\x0DFAKE-REPLY"),
            ([b"MAIL FROM:<a@sender.test>"], b"RCPT TO:<u@example.test> \x1b[2J",
             "555 5.5.4", "Unsupported RCPT parameter \\x1B[2J"),
            # Values and addresses are refused without being repeated at all.
            ([], b"MAIL FROM:<a@sender.test> BODY=\x1b[31m\rX", "501 5.5.4", None),
            ([], b"MAIL FROM:<a@sender.test> SIZE=1\r250 ok", "501 5.5.4", None),
            ([], b"MAIL FROM:<a\x1b[31m@sender.test>", "501 5.1.3", None),
            ([], b"MAIL FROM:<a@sen\rder.test>", "501 5.1.3", None),
            ([b"MAIL FROM:<a@sender.test>"], b"RCPT TO:<u\x1b@example.test>", "501 5.1.3",
             None),
            ([], b"\x1b[2JNOOP", "500 5.5.2", None),
            # ETRN (offered): a named queue is echoed with its controls as '?'.
            ([], b"ETRN #q\x1b[2J\rX", "458 4.7.0", "node #q?[2J?X: named queues"),
            ([], b"ETRN exa\x1bmple.test", "501 5.5.4", None),
        ]
        for before, line, code, echo in cases:
            r = self.session(b)
            for c in before:
                self.assertTrue(r.cmd(c).startswith("250"), c)
            r.send(line + b"\r\n")
            lines = r.reply_lines()
            for l in lines:
                check_no_raw_controls(f"the reply to {line!r}", l)
            reply = b"\n".join(lines).decode()
            self.assertTrue(reply.startswith(code), (line, reply))
            if echo:
                self.assertIn(echo, reply, line)
            self.assertTrue(r.cmd("NOOP").startswith("250"), "the session goes on")
            r.close()
        # HELO/EHLO names (policy.helo_syntax, on by default): refused, echoed escaped, logged.
        for line, echo in ((b"EHLO bad\x1b[2Jname", "<bad\\x1B[2Jname>"),
                           (b"EHLO bad\rFAKE-REPLY", "<bad\\x0DFAKE-REPLY>"),
                           (b"HELO bad\x00name", "<bad\\x00name>")):
            r = Raw(b.port)
            r.reply()
            r.send(line + b"\r\n")
            lines = r.reply_lines()
            for l in lines:
                check_no_raw_controls(f"the reply to {line!r}", l)
            reply = b"\n".join(lines).decode()
            self.assertTrue(reply.startswith("501 5.5.2 " + echo), (line, reply))
            self.assertTrue(r.cmd("EHLO good.test").startswith("250-"), "the session goes on")
            r.close()
        b.wait_log(r"reject HELO from \[127\.0\.0\.1\]: 501 5\.5\.2 <bad\\x1B\[2Jname>")
        b.wait_log(r"reject HELO from \[127\.0\.0\.1\]: 501 5\.5\.2 <bad\\x0DFAKE-REPLY>")
        b.wait_log(r"reject HELO from \[127\.0\.0\.1\]: 501 5\.5\.2 <bad\\x00name>")
        with open(b.log_path, "rb") as f:
            log = f.read()
        check_no_raw_controls("the log", log.replace(b"\r\n", b"\n"))
        self.assertEqual(b.queue(), [])

    def test_helo_name_accepted_unchecked_reaches_headers_and_log_without_raw_controls(self):
        primary = self.scripted().start()
        b = self.server({"example.test": f"127.0.0.1:{primary.port}"},
                        extra_toml="[policy]\nhelo_syntax = false")
        r = self.session(b, helo="bad\x1b[2Jname\rFAKE")
        self.assertTrue(r.cmd("MAIL FROM:<s@sender.test>").startswith("250"))
        self.assertTrue(r.cmd("RCPT TO:<u@example.test>").startswith("250"))
        self.assertTrue(r.cmd("DATA").startswith("354"))
        r.send(b"Subject: helo\r\n\r\nx\r\n.\r\n")
        self.assertTrue(r.reply().startswith("250"))
        r.close()
        t = wait_until(lambda: primary.transactions, what="delivery")[0]
        check_no_raw_controls("the delivered header section", t["data"].split(b"\r\n\r\n")[0]
                              .replace(b"\r\n", b"\n"))
        received = header_field(t["data"], "Received")
        spf = header_field(t["data"], "Received-SPF")
        self.assertIn(b"helo=\"bad?[2Jname?FAKE\"", spf)
        self.assertTrue(received.startswith(b"Received: from bad?[2Jname?FAKE ([127.0.0.1])"),
                        received)
        b.wait_log(r"accepted id=\S+ .*client=bad\?\[2Jname\?FAKE\[127\.0\.0\.1\]")
        with open(b.log_path, "rb") as f:
            check_no_raw_controls("the log", f.read().replace(b"\r\n", b"\n"))

    # 3 ------------------------------------------------------------------------------------------
    def test_received_names_ipv6_client_as_ipv6_address_literal(self):
        primary = self.scripted().start()
        # listen = ["[::1]:PORT"] (Backupmx(host="::1") would write "::1:PORT", which the
        # config refuses)
        b = self.server({"example.test": f"127.0.0.1:{primary.port}"}, host="[::1]",
                        smtp_port=free_port("::1"))
        s = smtplib.SMTP("::1", b.port, timeout=30)  # an IPv6 client
        s.ehlo("client.test.example")
        self.assertEqual(s.sock.family, socket.AF_INET6)
        s.sendmail("s@sender.test", ["u@example.test"], b"Subject: v6\r\n\r\nover IPv6\r\n")
        s.quit()
        t = wait_until(lambda: primary.transactions, what="delivery")[0]
        check_received_ipv6_literal(t["data"])
        self.assertIn(b"over IPv6", t["data"])

    # 4 ------------------------------------------------------------------------------------------
    def test_received_spf_keeps_utf8_sender_intact(self):
        primary = self.scripted().start()
        b = self.server({"example.test": f"127.0.0.1:{primary.port}"})
        r = self.session(b)
        self.assertTrue(r.cmd("MAIL FROM:<j\u00f6rg@sender.test> SMTPUTF8").startswith("250"))
        self.assertTrue(r.cmd("RCPT TO:<u@example.test>").startswith("250"))
        self.assertTrue(r.cmd("DATA").startswith("354"))
        r.send(b"Subject: spf\r\n\r\nx\r\n.\r\n")
        self.assertTrue(r.reply().startswith("250"))
        r.close()
        t = wait_until(lambda: primary.transactions, what="delivery")[0]
        self.assertTrue(t["data"].startswith(b"Received-SPF: pass "), t["data"][:300])
        check_received_spf_utf8_sender(t["data"], "j\u00f6rg@sender.test")
        # The comment names the domain of that sender too.
        spf = header_field(t["data"], "Received-SPF").decode()
        self.assertIn("domain of j\u00f6rg@sender.test designates 127.0.0.1", spf)

    # 5 ------------------------------------------------------------------------------------------
    def bounce_via_localhost(self, **primary_kw):
        """A message to a primary named localhost:PORT that refuses it; the DSN, at sender.test's
        primary."""
        primary = self.scripted(**primary_kw).start()
        senders = self.scripted().start()  # sender.test's primary: the DSN comes here
        b = self.server({"example.test": f"localhost:{primary.port}",
                         "sender.test": f"127.0.0.1:{senders.port}"}, extra_queue=ONE_ATTEMPT)
        s = b.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test"], b"Subject: refused\r\n\r\nx\r\n")
        s.quit()
        dsn = wait_until(lambda: senders.transactions, what="the DSN")[0]
        self.assertEqual(dsn["mail"].split(" ")[0], "<>")
        self.assertEqual(dsn["rcpts"], ["alice@sender.test"])
        text = dsn["data"].decode()
        self.assertIn("Final-Recipient: rfc822; bob@example.test", text)
        # The log still says where it went: host[address]:port.
        self.assertRegex(b.log(), r"bounced id=\S+ .*to=<bob@example.test> "
                                  r"primary=localhost\[127\.0\.0\.1\]:%d" % primary.port)
        return text

    def test_dsn_remote_mta_is_primary_host_name_when_rcpt_refused(self):
        text = self.bounce_via_localhost(answer=lambda r: "550 5.1.1 no such user")
        self.assertIn("Status: 5.1.1", text)
        check_remote_mta_is_host_name(text, "localhost")

    def test_dsn_remote_mta_is_primary_host_name_when_refused_after_dot(self):
        text = self.bounce_via_localhost(after_dot=["550 5.7.1 content refused"])
        self.assertIn("Status: 5.7.1", text)
        check_remote_mta_is_host_name(text, "localhost")

    # 6 ------------------------------------------------------------------------------------------
    def test_dsn_about_smtputf8_message_is_rfc6533_global_dsn_sent_with_smtputf8(self):
        primary = self.scripted(answer=lambda r: "550 5.1.1 no such user").start()
        senders = self.scripted().start()  # offers SMTPUTF8 (smtp-sink may not)
        b = self.server({"example.test": f"127.0.0.1:{primary.port}",
                         "sender.test": f"127.0.0.1:{senders.port}"}, extra_queue=ONE_ATTEMPT)
        r = self.session(b)
        self.assertTrue(r.cmd("MAIL FROM:<j\u00f6rg@sender.test> SMTPUTF8").startswith("250"))
        self.assertTrue(r.cmd("RCPT TO:<b\u00f6b@example.test>").startswith("250"))
        self.assertTrue(r.cmd("DATA").startswith("354"))
        r.send("Subject: gr\u00fc\u00dfe\r\nFrom: <j\u00f6rg@sender.test>\r\n\r\nx\r\n.\r\n"
               .encode())
        self.assertTrue(r.reply().startswith("250"))
        r.close()
        dsn = wait_until(lambda: senders.transactions, what="the DSN")[0]
        self.assertEqual(dsn["rcpts"], ["j\u00f6rg@sender.test"])
        text = dsn["data"].decode("utf-8")  # strict: the DSN is valid UTF-8
        check_rfc6533_dsn(dsn["mail"], text, "b\u00f6b@example.test")
        self.assertIn("Status: 5.1.1", text)
        # The returned headers, in message/global-headers, are the original's UTF-8 as sent.
        self.assertIn("Subject: gr\u00fc\u00dfe\r\nFrom: <j\u00f6rg@sender.test>", text)
        self.assertEqual(primary.transactions, [])


class TheChecksRejectTheOldForms(E2ETest):
    """Each check above turns red on what the server wrote before issue 13 (no server here)."""

    def rejects(self, check, *args):
        with self.assertRaises(AssertionError):
            check(*args)

    def test_checks_reject_raw_cr_esc_nul(self):
        for raw in (b"555 5.5.4 Unsupported MAIL parameter X\rFAKE-REPLY",
                    b"501 5.5.2 <bad\x1b[2Jname>: Helo command rejected",
                    b"501 5.5.2 <bad\x00name>"):
            self.rejects(check_no_raw_controls, "reply", raw)
        check_no_raw_controls("reply", b"555 5.5.4 Unsupported MAIL parameter X\\x0DFAKE-REPLY")

    def test_check_rejects_received_without_ipv6_tag(self):
        self.rejects(check_received_ipv6_literal,
                     b"Received: from c.test ([::1])\r\n\tby mx2 (backupmx) with ESMTP id 1\r\n\r\nx")
        check_received_ipv6_literal(
            b"Received: from c.test ([IPv6:::1])\r\n\tby mx2 (backupmx) with ESMTP id 1\r\n\r\nx")

    def test_check_rejects_received_spf_with_question_marks_for_utf8(self):
        old = (b"Received-SPF: pass (mx2: domain of j??rg@sender.test designates 127.0.0.1 as\r\n"
               b" permitted sender) client-ip=127.0.0.1; envelope-from=\"j??rg@sender.test\";\r\n"
               b"\r\nx")
        self.rejects(check_received_spf_utf8_sender, old, "j\u00f6rg@sender.test")
        check_received_spf_utf8_sender(old.replace(b"j??rg", "j\u00f6rg".encode()),
                                       "j\u00f6rg@sender.test")

    def test_check_rejects_remote_mta_host_ip_port(self):
        self.rejects(check_remote_mta_is_host_name,
                     "Action: failed\r\nRemote-MTA: dns; localhost[127.0.0.1]:2525\r\n", "localhost")
        check_remote_mta_is_host_name("Action: failed\r\nRemote-MTA: dns; localhost\r\n",
                                      "localhost")

    def test_check_rejects_ascii_dsn_for_smtputf8_message(self):
        good = ("Content-Type: text/plain; charset=utf-8\r\n\r\n"
                "Content-Type: message/global-delivery-status\r\n\r\n"
                "Final-Recipient: utf-8; b\u00f6b@example.test\r\n"
                "Content-Type: message/global-headers\r\n\r\n")
        check_rfc6533_dsn("<> SIZE=1856 SMTPUTF8", good, "b\u00f6b@example.test")
        for old in (good.replace("message/global-delivery-status", "message/delivery-status"),
                    good.replace("message/global-headers", "text/rfc822-headers"),
                    good.replace("charset=utf-8", "charset=us-ascii"),
                    good.replace("utf-8; b", "rfc822; b")):
            self.rejects(check_rfc6533_dsn, "<> SMTPUTF8", old, "b\u00f6b@example.test")
        self.rejects(check_rfc6533_dsn, "<> SIZE=1856", good, "b\u00f6b@example.test")


if __name__ == "__main__":
    main()
