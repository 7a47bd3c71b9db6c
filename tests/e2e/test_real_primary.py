"""The delivery stories against a real Postfix as the primary (postfix_primary.PostfixPrimary: a
throw-away instance on loopback delivering into Maildirs): bytes and envelope as sent, PIPELINING
(and none when Postfix does not offer it), outbound TLS may / encrypt / verify / dane, a 20 MB body,
and many queued messages over one connection. test_delivery, test_tls and test_retry_bounce tell
the same stories against ScriptedPrimary, which stays for the replies a real server never gives."""
import re

from dnsserver import DnsServer, SignedZoneServer
from harness import E2ETest, Raw, free_port, main, wait_until
from pki import TestCA, tlsa_rdata
from postfix_primary import PostfixPrimary
import test_delivery  # (the module, not its classes: their tests are test_delivery's to run)
from test_delivery import strip_our_received

# Leading dots (stuffed on the wire), a lone dot, a line of 998 bytes (RFC 5321's limit), 8-bit
# bytes in a header and the body, a "From " line (an mbox would quote it, a Maildir must not),
# trailing blanks and empty lines.
BODY = (b"Subject: exact bytes\r\nX-Eight: caf\xc3\xa9\r\n\r\n"
        b".leading dot\r\n..two dots\r\n.\r\n \r\ntrailing space \r\n"
        b"From the start of a line\r\nna\xc3\xafve 8-bit body\r\n"
        + b"x" * 998 + b"\r\n\r\n\r\nlast line\r\n")

FAST = 'retry_min = "1s"\nretry_max = "2s"\nprobe_interval = "1s"'


def send_raw(b, sender, rcpts, body, mail_args=" BODY=8BITMIME"):
    """One transaction to backupmx, one command at a time, the body dot-stuffed by hand."""
    r = Raw(b.port)
    r.reply()
    r.cmd("EHLO raw.test")
    assert r.cmd(f"MAIL FROM:<{sender}>{mail_args}").startswith("250")
    for rcpt in rcpts:
        assert r.cmd(f"RCPT TO:<{rcpt}>").startswith("250")
    assert r.cmd("DATA").startswith("354")
    r.send(b"\r\n".join(b"." + l if l.startswith(b".") else l for l in body.split(b"\r\n"))
           + b".\r\n")
    reply = r.reply()
    assert reply.startswith("250 2.0.0 Ok: queued as"), reply
    r.cmd("QUIT")
    r.close()


def postfix_queue_id(message):
    """The queue id in the Received: field Postfix's smtpd added."""
    return re.search(rb"\(Postfix\) with ESMTPS? id ([0-9A-F]+)", message["received"]).group(1)


class RealPrimaryTest(E2ETest):
    def setUp(self):
        super().setUp()
        self.primaries, self.stop_errors = [], []

    def primary(self, **kw):
        p = PostfixPrimary(self.dir, **kw)
        self.primaries.append(p)

        def stop():
            try:
                p.stop()
            except AssertionError as e:  # it killed what was left; the test fails below
                self.stop_errors.append(str(e))
                raise
        self.stoppers.append(stop)
        return p

    def tearDown(self):
        super().tearDown()  # stops every Postfix: then nothing of theirs may be left
        self.assertEqual(self.stop_errors, [])
        for p in self.primaries:
            self.assertEqual(p.pids(), [], "a Postfix process outlived the test")


class Delivery(RealPrimaryTest):
    def test_message_and_envelope_arrive_byte_for_byte_in_one_transaction(self):
        p = self.primary().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"}).start()
        send_raw(b, "Sender.Mixed@Sender.Test", ["one@example.test", "two@example.test"], BODY)
        wait_until(lambda: len(p.messages()) == 2, what="both copies in the Maildir")
        b.wait_log(r"delivered id=")
        got = sorted(p.messages(), key=lambda m: m["recipient"])
        self.assertEqual([m["recipient"] for m in got], ["one@example.test", "two@example.test"])
        self.assertEqual([m["original_recipient"] for m in got],
                         ["one@example.test", "two@example.test"])
        for m in got:
            self.assertEqual(m["sender"], "Sender.Mixed@sender.test")
            self.assertEqual(strip_our_received(m["message"]), BODY)
        # One transaction carried both recipients: one Postfix queue file, nrcpt=2.
        qid = postfix_queue_id(got[0]).decode()
        self.assertEqual(postfix_queue_id(got[1]).decode(), qid)
        self.assertRegex(p.maillog(), qid + r": from=<Sender.Mixed@sender.test>, size=\d+, nrcpt=2 ")
        self.assertEqual([(s["mail"], s["rcpt"], s["data"]) for s in p.sessions() if s["mail"]],
                         [(1, 2, 1)])

    def test_null_sender_arrives_as_empty_return_path(self):
        p = self.primary().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"}).start()
        send_raw(b, "", ["bob@example.test"], b"Subject: a bounce\r\n\r\nnull sender\r\n")
        wait_until(lambda: p.messages(), what="delivery")
        m = p.messages()[0]
        self.assertTrue(m["raw"].startswith(b"Return-Path: <>\n"), m["raw"][:80])
        self.assertEqual(m["sender"], "")
        self.assertEqual(strip_our_received(m["message"]),
                         b"Subject: a bounce\r\n\r\nnull sender\r\n")

    def test_pipelining_sends_mail_rcpts_and_data_in_one_write(self):
        p = self.primary(trace_io=True).start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"}).start()
        send_raw(b, "a@sender.test", ["x@example.test", "y@example.test", "z@example.test"],
                 b"Subject: pipelined\r\n\r\nbody\r\n")
        wait_until(lambda: len(p.messages()) == 3, what="three copies")
        # smtpd read MAIL, three RCPTs and DATA from the client at once: no read in between.
        self.assertEqual(p.reads_within_transactions(), [0])
        self.assertNotIn("improper command pipelining", p.maillog())

    def test_without_pipelining_offered_each_command_waits_for_its_reply(self):
        p = self.primary(trace_io=True, pipelining=False).start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"}).start()
        send_raw(b, "a@sender.test", ["x@example.test", "y@example.test"],
                 b"Subject: not pipelined\r\n\r\nbody\r\n")
        wait_until(lambda: len(p.messages()) == 2, what="two copies")
        self.assertEqual(p.reads_within_transactions(), [3])  # RCPT, RCPT, DATA: one read each
        self.assertNotIn("improper command pipelining", p.maillog())

    def test_20_mb_body_arrives_intact(self):
        p = self.primary().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"},
                          extra_smtp="max_message_size = 52428800").start()
        body = test_delivery.LargeBodies.big_body(None, 20)  # dots and lines of every length, 64 KiB pieces
        s = b.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test"], body)
        s.quit()
        wait_until(lambda: p.messages(), timeout=120, what="the 20 MB message in the Maildir")
        got = strip_our_received(p.messages()[0]["message"])
        self.assertEqual(len(got), len(body))
        self.assertEqual(got, body)
        b.wait_log(r"delivered id=\S+ from=<alice@sender.test> to=<bob@example.test> ")

    def test_queued_messages_leave_over_one_connection(self):
        p = self.primary()  # down: its port is held, connections to it are refused
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"},
                          extra_queue='probe_interval = "1s"\nretry_min = "1h"\nretry_max = "2h"\n'
                                      'max_concurrency = 1\ninitial_concurrency = 1').start()
        s = b.smtp()
        for i in range(8):
            s.sendmail("alice@sender.test", [f"u{i}@example.test"], f"Subject: {i}\r\n\r\n{i}\r\n")
        s.quit()
        b.wait_log(r"primary for example.test is down")
        wait_until(lambda: len(b.queue()) == 8, what="eight queued")
        p.start()
        b.wait_log(r"primary for example.test is up .* sending \d+ queued messages")
        wait_until(lambda: len(p.messages()) == 8, timeout=60, what="eight delivered")
        wait_until(lambda: b.queue() == [], what="empty queue")
        self.assertEqual(sorted(m["recipient"] for m in p.messages()),
                         sorted(f"u{i}@example.test" for i in range(8)))
        carrying = [s for s in p.sessions() if s["mail"]]  # (the probes' sessions send no MAIL)
        self.assertEqual([(s["mail"], s["data"]) for s in carrying], [(8, 8)], p.sessions())
        self.assertEqual(p.maillog().count(": connect from "), len(p.sessions()))


class OutboundTls(RealPrimaryTest):
    """backupmx's tls policies against Postfix's STARTTLS; mail.example.test resolves (unbound)
    to the address Postfix listens on, as in test_tls.OutboundTls."""

    def setUp(self):
        super().setUp()
        self.ca = TestCA(self.dir)

    def run_policy(self, policy, tls, ca_file=None, expect_delivery=True):
        p = self.primary(host="127.0.0.21", tls=tls).start()
        dns = DnsServer(self.dir, records=["mail.example.test. 300 IN A 127.0.0.21"]).start()
        self.stoppers.append(dns.stop)
        spec = {"primary": f"mail.example.test:{p.port}", "tls": policy}
        if ca_file:
            spec["tls_ca_file"] = ca_file
        b = self.backupmx({"example.test": spec}, extra_toml=f'[dns]\nresolver = "{dns.address}"',
                          extra_queue=FAST).start()
        s = b.smtp()
        s.sendmail("a@sender.test", ["bob@example.test"], "Subject: tls\r\n\r\nbody\r\n")
        s.quit()
        if expect_delivery:
            wait_until(lambda: p.messages(), what="delivery")
            b.wait_log(r"delivered id=")  # the primary answers before backupmx logs it
            self.assertIn(b"(using TLSv1.3 with cipher ", p.messages()[0]["received"])
        else:
            b.wait_log(r"deferred id=", count=2)  # tried, and tried again: never falls back
            self.assertEqual(p.messages(), [])
            self.assertEqual(len(b.queue()), 1)
        return p, b

    def test_may_encrypts_to_postfix_with_an_untrusted_certificate(self):
        leaf = self.ca.self_signed("whatever.test")
        p, b = self.run_policy("may", (leaf.cert, leaf.key))
        self.assertRegex(b.log(), r'delivered id=.* tls="TLSv1\.3 cipher=\S+ peer=unverified"')
        self.assertRegex(p.maillog(), r"Anonymous TLS connection established from \S+: TLSv1\.3 ")

    def test_encrypt_delivers_to_postfix_over_tls(self):
        leaf = self.ca.self_signed("whatever.test")
        p, b = self.run_policy("encrypt", (leaf.cert, leaf.key))
        self.assertRegex(b.log(), r'delivered id=.* tls="TLSv1\.3 cipher=\S+ peer=unverified"')
        self.assertRegex(p.maillog(), r"Anonymous TLS connection established from \S+: TLSv1\.3 ")

    def test_encrypt_defers_when_postfix_offers_no_starttls(self):
        p, b = self.run_policy("encrypt", None, expect_delivery=False)
        self.assertIn("does not offer STARTTLS, required by tls = encrypt",
                      b.queue()[0]["last_error"])

    def test_verify_delivers_to_postfix_with_a_certificate_from_the_ca(self):
        leaf = self.ca.issue(["mail.example.test"])
        p, b = self.run_policy("verify", (leaf.chain, leaf.key), ca_file=self.ca.cert)
        self.assertRegex(b.log(), r'delivered id=.* tls="TLSv1\.3 cipher=\S+ peer=verified"')
        self.assertRegex(p.maillog(), r"Anonymous TLS connection established from \S+: TLSv1\.3 ")

    def test_verify_defers_when_postfix_certificate_names_another_host(self):
        leaf = self.ca.issue(["other.example.test"])
        p, b = self.run_policy("verify", (leaf.chain, leaf.key), ca_file=self.ca.cert,
                               expect_delivery=False)
        self.assertIn("tls = verify", b.queue()[0]["last_error"])


class Dane(RealPrimaryTest):
    """tls = "dane" against Postfix: MX, A and TLSA records in a DNSSEC-signed zone (nsd), as in
    test_tls.Dane."""

    def run_dane(self, pinned, served, expect_delivery=True):
        port = free_port("127.0.0.22")
        zone = SignedZoneServer(self.dir, zone="secure.test.", records=[
            "secure.test. 300 IN MX 10 mail.secure.test.",
            "mail.secure.test. 300 IN A 127.0.0.22",
            f"_{port}._tcp.mail.secure.test. 300 IN TLSA {tlsa_rdata(pinned.cert)}"])
        anchor = zone.trust_anchor_file()
        zone.start()
        self.stoppers.append(zone.stop)
        p = self.primary(host="127.0.0.22", port=port, domains=("secure.test",),
                         tls=(served.cert, served.key)).start()
        b = self.backupmx({"secure.test": {"tls": "dane"}},
                          extra_toml=f'[dns]\nresolver = "{zone.address}"\ntrust_anchor = "{anchor}"\n'
                                     f'[delivery]\nport = {port}', extra_queue=FAST).start()
        s = b.smtp()
        s.sendmail("a@sender.test", ["bob@secure.test"], "Subject: dane\r\n\r\nbody\r\n")
        s.quit()
        if expect_delivery:
            wait_until(lambda: p.messages(), what="delivery")
            b.wait_log(r"delivered id=")
        else:
            b.wait_log(r"deferred id=", count=2)
            self.assertEqual(p.messages(), [])
        return p, b

    def test_dane_delivers_to_postfix_whose_key_the_tlsa_record_pins(self):
        leaf = TestCA(self.dir).self_signed("mail.secure.test")  # DANE-EE: the key is pinned
        p, b = self.run_dane(leaf, leaf)
        self.assertRegex(b.log(), r'delivered id=.* tls="TLSv1\.3 cipher=\S+ peer=dane"')
        self.assertRegex(p.maillog(), r"Anonymous TLS connection established from \S+: TLSv1\.3 ")
        self.assertIn(b"(using TLSv1.3 with cipher ", p.messages()[0]["received"])

    def test_dane_defers_when_postfix_serves_another_key(self):
        ca = TestCA(self.dir)
        pinned, served = ca.self_signed("mail.secure.test"), ca.self_signed("mail.secure.test")
        p, b = self.run_dane(pinned, served, expect_delivery=False)
        self.assertIn("tls = dane", b.queue()[0]["last_error"])


if __name__ == "__main__":
    main()
