"""TLS in and out: inbound STARTTLS (and the CVE-2011-0411 injection refused), the Received:
header's TLS record, and outbound policies may / encrypt / verify / dane against real DNS
(unbound; nsd with a DNSSEC-signed zone for DANE) and certificates from a test CA."""
import socket
import ssl
import time

from dnsserver import DnsServer, SignedZoneServer
from harness import E2ETest, Raw, free_port, main, swaks, wait_until
from pki import TestCA, tlsa_rdata


class GarbageAfterStartTls:
    """Stands in for a ScriptedPrimary's TLS context: where the primary would start its side of
    the handshake it sends bytes that are no TLS record and closes the connection."""

    def __init__(self):
        self.handshakes = 0

    def wrap_socket(self, conn, server_side=True):
        self.handshakes += 1
        conn.sendall(b"this is not a TLS record\r\n")
        conn.close()
        raise OSError("TLS handshake broken on purpose")


class InboundTls(E2ETest):
    def setUp(self):
        super().setUp()
        self.ca = TestCA(self.dir)
        leaf = self.ca.issue(["mx2.test.example"])
        self.primary = self.scripted().start()
        self.b = self.backupmx({"example.test": f"127.0.0.1:{self.primary.port}"},
                               extra_smtp=f'tls_cert = "{leaf.chain}"\ntls_key = "{leaf.key}"').start()

    def tls_session(self, **ctx_kw):
        r = Raw(self.b.port)
        r.reply()
        ehlo = r.cmd("EHLO client.test")
        self.assertIn("250-STARTTLS", ehlo)
        self.assertTrue(r.cmd("STARTTLS").startswith("220 2.0.0"))
        ctx = ssl.create_default_context(cafile=self.ca.cert)
        for k, v in ctx_kw.items():
            if k == "_ciphers":
                ctx.set_ciphers(v + ":@SECLEVEL=0")
            else:
                setattr(ctx, k, v)
        r.s = ctx.wrap_socket(r.s, server_hostname="mx2.test.example")
        return r

    def test_starttls_then_mail_records_tls_in_received(self):
        r = self.tls_session()
        self.assertIn(r.s.version(), ("TLSv1.2", "TLSv1.3"))
        self.assertIsNone(r.s.compression())
        ehlo = r.cmd("EHLO client.test")
        self.assertNotIn("STARTTLS", ehlo)  # not offered twice
        self.assertTrue(r.cmd("MAIL FROM:<a@sender.test>").startswith("250"))
        r.cmd("RCPT TO:<bob@example.test>")
        r.cmd("DATA")
        r.send(b"Subject: over tls\r\n\r\nsecret\r\n.\r\n")
        self.assertTrue(r.reply().startswith("250"))
        wait_until(lambda: self.primary.transactions, what="delivery")
        data = self.primary.transactions[0]["data"].decode()
        self.assertRegex(data, r"\(using TLSv1\.[23] with cipher \S+ \(\d+ bits\)\)\r\n\tby "
                               r"mx2.test.example \(backupmx\) with ESMTPS id")

    def test_state_is_forgotten_after_starttls(self):
        r = self.tls_session()
        self.assertTrue(r.cmd("MAIL FROM:<a@sender.test>").startswith("503 5.5.1"))  # EHLO again
        r.cmd("EHLO client.test")
        self.assertTrue(r.cmd("STARTTLS").startswith("503 5.5.1"))  # already active

    def test_old_protocols_refused(self):
        with self.assertRaises(ssl.SSLError):
            self.tls_session(minimum_version=ssl.TLSVersion.TLSv1, maximum_version=ssl.TLSVersion.TLSv1_1)

    def test_weak_ciphers_refused(self):
        tried = []
        for ciphers in ("AES128-SHA", "AES256-SHA256", "ECDHE-RSA-AES128-SHA", "DES-CBC3-SHA"):
            probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            try:
                probe.set_ciphers(ciphers + ":@SECLEVEL=0")
            except ssl.SSLError:
                continue  # this OpenSSL cannot even offer it
            tried.append(ciphers)
            with self.assertRaises(ssl.SSLError, msg=ciphers):
                self.tls_session(maximum_version=ssl.TLSVersion.TLSv1_2, _ciphers=ciphers)
        self.assertIn("AES128-SHA", tried)  # at least the classic non-AEAD suite was offered

    def test_plaintext_pipelined_after_starttls_is_refused(self):
        r = Raw(self.b.port)
        r.reply()
        r.cmd("EHLO client.test")
        r.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")  # CVE-2011-0411
        reply = r.reply()
        self.assertTrue(reply.startswith("554 5.5.1"), reply)
        self.assertIn("pipelined after STARTTLS", reply)
        self.assertEqual(r.reply(), "")  # closed, no TLS, nothing executed
        self.assertIn("plaintext injection refused", self.b.log())

    def test_swaks_with_tls(self):
        code, out = swaks(self.b.port, "--tls", "--from", "a@sender.test", "--to",
                          "bob@example.test")
        self.assertEqual(code, 0, out)
        self.assertIn(" ~> MAIL FROM:<a@sender.test>", out)  # "~>": sent inside TLS
        wait_until(lambda: self.primary.transactions, what="delivery")


class DemoCertificate(E2ETest):
    def test_make_run_generates_a_self_signed_pair(self):
        import os
        import subprocess
        repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
        tls_dir = os.path.join(self.dir, "tls")
        subprocess.run(["make", "-s", "-C", repo, f"TLS_DIR={tls_dir}", f"{tls_dir}/cert.pem"],
                       check=True, capture_output=True, timeout=60)
        self.assertEqual(os.stat(f"{tls_dir}/key.pem").st_mode & 0o777, 0o600)
        b = self.backupmx({"example.test": "127.0.0.1:9"},
                          extra_smtp=f'tls_cert = "{tls_dir}/cert.pem"\ntls_key = "{tls_dir}/key.pem"').start()
        r = Raw(b.port)
        r.reply()
        r.cmd("EHLO c.test")
        self.assertTrue(r.cmd("STARTTLS").startswith("220"))
        ctx = ssl.create_default_context(cafile=f"{tls_dir}/cert.pem")
        s = ctx.wrap_socket(r.s, server_hostname="mx2.demo.test")  # verifies against itself
        self.assertEqual(dict(x[0] for x in s.getpeercert()["subject"])["commonName"], "mx2.demo.test")
        s.close()


class OutboundTls(E2ETest):
    def setUp(self):
        super().setUp()
        self.ca = TestCA(self.dir)
        self.port = free_port()

    def run_policy(self, policy, primary_kw, dns_records=(), ca_file=None, primary_host=None,
                   expect_delivery=True):
        primary = self.scripted(host="127.0.0.21", port=self.port, **primary_kw).start()
        dns = DnsServer(self.dir, records=list(dns_records) or
                        ["mail.example.test. 300 IN A 127.0.0.21"]).start()
        self.stoppers.append(dns.stop)
        spec = {"primary": f"{primary_host or 'mail.example.test'}:{self.port}", "tls": policy}
        if ca_file:
            spec["tls_ca_file"] = ca_file
        b = self.backupmx({"example.test": spec},
                          extra_toml=f'[dns]\nresolver = "{dns.address}"',
                          extra_queue='retry_min = "1s"\nretry_max = "2s"\nprobe_interval = "1s"').start()
        s = b.smtp()
        s.sendmail("a@sender.test", ["bob@example.test"], "Subject: tls\r\n\r\nbody\r\n")
        s.quit()
        if expect_delivery:
            wait_until(lambda: primary.transactions, what="delivery")
            b.wait_log(r"delivered id=")  # the primary answers before backupmx logs it
        else:
            b.wait_log(r"deferred id=", count=2)  # tried, and tried again: never falls back
            self.assertEqual(primary.transactions, [])
            self.assertEqual(len(b.queue()), 1)
        return primary, b

    def test_may_without_starttls_goes_plain(self):
        p, b = self.run_policy("may", {})
        self.assertIsNone(p.transactions[0]["tls"])
        self.assertIn('tls="none"', b.log())

    def test_may_with_untrusted_certificate_encrypts(self):
        leaf = self.ca.self_signed("whatever.test")
        p, b = self.run_policy("may", {"tls": (leaf.cert, leaf.key)})
        self.assertIn(p.transactions[0]["tls"], ("TLSv1.2", "TLSv1.3"))
        self.assertRegex(b.log(), r'tls="TLSv1\.[23] cipher=\S+ peer=unverified"')

    def may_after_a_failed_handshake(self):
        """tls = may against a primary that says 220 to STARTTLS and then sends bytes that are
        no TLS record and hangs up: the handshake fails, and backupmx connects again."""
        p = self.scripted(host="127.0.0.21", port=self.port)
        p.tls = GarbageAfterStartTls()  # offers STARTTLS; its "handshake" is the garbage
        p.start()
        dns = DnsServer(self.dir, records=["mail.example.test. 300 IN A 127.0.0.21"]).start()
        self.stoppers.append(dns.stop)
        b = self.backupmx({"example.test": {"primary": f"mail.example.test:{self.port}",
                                            "tls": "may"}},
                          extra_toml=f'[dns]\nresolver = "{dns.address}"',
                          extra_queue='retry_min = "1h"\nretry_max = "2h"\nprobe_interval = "1h"'
                          ).start()
        s = b.smtp()
        s.sendmail("a@sender.test", ["bob@example.test"], "Subject: tls\r\n\r\nbody\r\n")
        s.quit()
        wait_until(lambda: p.transactions, timeout=10, what="delivery in plaintext")
        b.wait_log(r"delivered id=")
        return p, b

    def test_may_retries_in_plaintext_after_a_failed_handshake(self):
        p, b = self.may_after_a_failed_handshake()
        self.assertEqual(p.tls.handshakes, 1)  # the first connection tried TLS, once
        self.assertEqual(p.connections, 2)  # ... and the message came on the second one
        self.assertEqual(len(p.transactions), 1)
        self.assertIsNone(p.transactions[0]["tls"])  # in plaintext
        self.assertIn(b"body", p.transactions[0]["data"])
        self.assertRegex(b.log(), r'delivered id=\S+ .*tls="none"')
        self.assertNotIn("deferred id=", b.log())  # the same attempt, not a retry an hour later
        # "delivered" is logged before the store commits the outcome (group commit): wait for it
        wait_until(lambda: b.queue() == [], timeout=10, what="the delivered message gone")

    def test_may_logs_the_failed_handshake_it_retried_in_plaintext(self):
        # README: "a failed handshake is retried in plaintext and logged"
        p, b = self.may_after_a_failed_handshake()
        self.assertRegex(b.log(), r"TLS handshake with mail.example.test\[127.0.0.21\]:\d+ "
                                  r"failed")

    def test_encrypt_refuses_plaintext(self):
        p, b = self.run_policy("encrypt", {}, expect_delivery=False)
        self.assertIn("does not offer STARTTLS, required by tls = encrypt", b.queue()[0]["last_error"])

    def test_encrypt_accepts_any_certificate(self):
        leaf = self.ca.self_signed("whatever.test")
        p, b = self.run_policy("encrypt", {"tls": (leaf.cert, leaf.key)})
        self.assertIsNotNone(p.transactions[0]["tls"])

    def test_verify_with_the_right_ca_and_name(self):
        leaf = self.ca.issue(["mail.example.test"])
        p, b = self.run_policy("verify", {"tls": (leaf.chain, leaf.key)}, ca_file=self.ca.cert)
        self.assertRegex(b.log(), r'tls="TLSv1\.[23] cipher=\S+ peer=verified"')

    def test_verify_refuses_a_wrong_name(self):
        leaf = self.ca.issue(["other.example.test"])
        p, b = self.run_policy("verify", {"tls": (leaf.chain, leaf.key)}, ca_file=self.ca.cert,
                               expect_delivery=False)
        self.assertIn("TLS handshake with mail.example.test[127.0.0.21]", b.queue()[0]["last_error"])
        self.assertIn("tls = verify", b.queue()[0]["last_error"])

    def test_verify_refuses_an_unknown_ca(self):
        other = TestCA(self.dir, name="other-ca")
        leaf = other.issue(["mail.example.test"])
        p, b = self.run_policy("verify", {"tls": (leaf.chain, leaf.key)}, ca_file=self.ca.cert,
                               expect_delivery=False)
        self.assertIn("certificate", b.queue()[0]["last_error"])

    def test_verify_refuses_plaintext(self):
        self.run_policy("verify", {}, ca_file=self.ca.cert, expect_delivery=False)


class Dane(E2ETest):
    def run_dane(self, tlsa_cert, served_cert, bogus=False, expect_delivery=True):
        port = free_port()
        records = ["secure.test. 300 IN MX 10 mail.secure.test.",
                   "mail.secure.test. 300 IN A 127.0.0.22",
                   f"_{port}._tcp.mail.secure.test. 300 IN TLSA {tlsa_rdata(tlsa_cert)}"]
        zone = SignedZoneServer(self.dir, zone="secure.test.", records=records,
                                bogus=[(f"_{port}._tcp.mail.secure.test.", "TLSA")] if bogus else False)
        anchor = zone.trust_anchor_file()
        zone.start()
        self.stoppers.append(zone.stop)
        primary = self.scripted(host="127.0.0.22", port=port, tls=served_cert).start()
        b = self.backupmx({"secure.test": {"tls": "dane"}},
                          extra_toml=f'[dns]\nresolver = "{zone.address}"\ntrust_anchor = "{anchor}"\n'
                                     f'[delivery]\nport = {port}',
                          extra_queue='retry_min = "1s"\nretry_max = "2s"\nprobe_interval = "1s"').start()
        s = b.smtp()
        s.sendmail("a@sender.test", ["bob@secure.test"], "Subject: dane\r\n\r\nbody\r\n")
        s.quit()
        if expect_delivery:
            wait_until(lambda: primary.transactions, what="delivery")
            b.wait_log(r"delivered id=")  # the primary answers before backupmx logs it
        else:
            b.wait_log(r"deferred id=", count=2)
            self.assertEqual(primary.transactions, [])
        return primary, b

    def test_dane_without_tlsa_delivers_with_opportunistic_tls(self):
        # A signed zone with no TLSA record for the host (secure NODATA): RFC 7672 2.2, tls = may.
        port = free_port()
        zone = SignedZoneServer(self.dir, zone="secure.test.", records=[
            "secure.test. 300 IN MX 10 mail.secure.test.",
            "mail.secure.test. 300 IN A 127.0.0.22"])
        anchor = zone.trust_anchor_file()
        zone.start()
        self.stoppers.append(zone.stop)
        leaf = TestCA(self.dir).self_signed("whatever.test")  # no TLSA: any certificate will do
        p, b = self.send_dane(zone.address, anchor, port, "secure.test", "127.0.0.22",
                              (leaf.cert, leaf.key))
        self.assertIn(p.transactions[0]["tls"], ("TLSv1.2", "TLSv1.3"))
        self.assertRegex(b.log(), r'delivered id=\S+ .*tls="TLSv1\.[23] cipher=\S+ '
                                  r'peer=unverified \(no TLSA\)"')

    def test_dane_with_an_unsigned_tlsa_delivers_with_opportunistic_tls(self):
        # plain.test is not signed (outside the trust anchor's zone): its TLSA record is not
        # DNSSEC-secure, so it does not count (RFC 7672 2.2) and a certificate that does not
        # match it is still used, opportunistically.
        port = free_port()
        signed = SignedZoneServer(self.dir, zone="secure.test.", records=[
            "mail.secure.test. 300 IN A 127.0.0.22"])  # only for its trust anchor
        anchor = signed.trust_anchor_file()
        pinned = TestCA(self.dir).self_signed("mail.plain.test")
        served = TestCA(self.dir, name="served-ca").self_signed("mail.plain.test")
        dns = DnsServer(self.dir, records=[
            "plain.test. 300 IN MX 10 mail.plain.test.",
            "mail.plain.test. 300 IN A 127.0.0.23",
            f"_{port}._tcp.mail.plain.test. 300 IN TLSA {tlsa_rdata(pinned.cert)}"]).start()
        self.stoppers.append(dns.stop)
        p, b = self.send_dane(dns.address, anchor, port, "plain.test", "127.0.0.23",
                              (served.cert, served.key))
        self.assertIn(p.transactions[0]["tls"], ("TLSv1.2", "TLSv1.3"))
        self.assertIn((f"_{port}._tcp.mail.plain.test.", "TLSA"), dns.queries())  # it was asked
        self.assertRegex(b.log(), r'delivered id=\S+ .*tls="TLSv1\.[23] cipher=\S+ '
                                  r'peer=unverified \(TLSA not DNSSEC-signed\)"')

    def send_dane(self, resolver, anchor, port, domain, host, served_cert):
        primary = self.scripted(host=host, port=port, tls=served_cert).start()
        b = self.backupmx({domain: {"tls": "dane"}},
                          extra_toml=f'[dns]\nresolver = "{resolver}"\ntrust_anchor = "{anchor}"\n'
                                     f'[delivery]\nport = {port}',
                          extra_queue='retry_min = "1h"\nretry_max = "2h"\nprobe_interval = "1h"'
                          ).start()
        s = b.smtp()
        s.sendmail("a@sender.test", [f"bob@{domain}"], "Subject: dane\r\n\r\nbody\r\n")
        s.quit()
        wait_until(lambda: primary.transactions, timeout=15, what="delivery")
        b.wait_log(r"delivered id=")
        self.assertNotIn("deferred id=", b.log())
        return primary, b

    def test_dane_ee_matching_key_delivers(self):
        ca = TestCA(self.dir)
        leaf = ca.self_signed("mail.secure.test")  # DANE-EE: no CA needed, the key is pinned
        p, b = self.run_dane(leaf.cert, (leaf.cert, leaf.key))
        self.assertRegex(b.log(), r'tls="TLSv1\.[23] cipher=\S+ peer=dane"')

    def test_dane_mismatch_defers(self):
        ca = TestCA(self.dir)
        pinned = ca.self_signed("mail.secure.test")
        served = ca.self_signed("mail.secure.test")  # another key
        p, b = self.run_dane(pinned.cert, (served.cert, served.key), expect_delivery=False)
        self.assertIn("tls = dane", b.queue()[0]["last_error"])

    def test_dane_bogus_tlsa_defers(self):
        ca = TestCA(self.dir)
        leaf = ca.self_signed("mail.secure.test")
        p, b = self.run_dane(leaf.cert, (leaf.cert, leaf.key), bogus=True, expect_delivery=False)
        self.assertIn("DNSSEC bogus", b.queue()[0]["last_error"])


if __name__ == "__main__":
    main()
