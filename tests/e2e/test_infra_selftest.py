"""Test infrastructure self-test: the DNS servers (dnsserver.py) and the test CA (pki.py) do what
the DNS/DANE/TLS stories rely on. No backupmx here: only unbound, nsd, ldns and openssl."""
import contextlib
import hashlib
import socket
import ssl
import subprocess
import threading
import time
import unittest

from harness import E2ETest, main
from dnsserver import (DnsServer, DnsTimeout, SignedZoneServer, ValidatingResolver,
                       libunbound_available, query, ub_resolve)
from dnsserver import _alive as alive
from pki import TestCA, cert_sha256, spki_sha256, tlsa_rdata, tlsa_record

TLSA_HEX = "0123456789abcdef" * 4

RECORDS = [
    "example.test. 300 IN MX 10 mail.example.test.",
    "example.test. 300 IN MX 20 mx2.example.test.",
    "example.test. 300 IN NS ns1.example.test.",
    'example.test. 300 IN TXT "v=spf1 -all"',
    "mail.example.test. 300 IN A 127.0.0.1",
    "mail.example.test. 300 IN AAAA ::1",
    "mx2.example.test. 300 IN CNAME mail.example.test.",
    f"_25._tcp.mail.example.test. 300 IN TLSA 3 1 1 {TLSA_HEX}",
    "nullmx.test. 300 IN MX 0 .",
]


@contextlib.contextmanager
def cleanup_on_error(test):
    """unittest skips tearDown when setUp raises: stop what started and drop the temp dir."""
    try:
        yield
    except BaseException:
        test.tearDown()
        raise


def run(cmd, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True,
                          timeout=60, **kw)


class DnsServerTest(E2ETest):

    def setUp(self):
        super().setUp()
        with cleanup_on_error(self):
            self.dns = DnsServer(self.dir, records=RECORDS, nxdomain_zones=["gone.test."],
                                 servfail_names=["broken.test."], refused_names=["closed.test."],
                                 drop_names=["blackhole.test."])
            self.stoppers.append(self.dns.stop)
            self.dns.start()

    def q(self, name, rtype, **kw):
        return query(self.dns.port, name, rtype, **kw)

    def test_answers_each_record_type(self):
        r = self.q("example.test.", "MX")
        self.assertEqual(r.rcode, "NOERROR")
        self.assertTrue(r.aa)
        self.assertEqual(sorted(r.values("MX")), ["10 mail.example.test.", "20 mx2.example.test."])
        self.assertEqual({rr.ttl for rr in r.answer}, {300})
        self.assertEqual(self.q("mail.example.test.", "A").values("A"), ["127.0.0.1"])
        self.assertEqual(self.q("mail.example.test.", "AAAA").values("AAAA"), ["::1"])
        self.assertEqual(self.q("example.test.", "NS").values("NS"), ["ns1.example.test."])
        self.assertEqual(self.q("example.test.", "TXT").values("TXT"), ['"v=spf1 -all"'])
        self.assertEqual(self.q("_25._tcp.mail.example.test.", "TLSA").values("TLSA"),
                         [f"3 1 1 {TLSA_HEX}"])
        # A CNAME comes back as such (unbound does not chase local-data; the client does).
        for rtype in ("CNAME", "A"):
            r = self.q("mx2.example.test.", rtype)
            self.assertEqual(r.rcode, "NOERROR")
            self.assertEqual(r.values("CNAME"), ["mail.example.test."])

    def test_null_mx(self):
        r = self.q("nullmx.test.", "MX")
        self.assertEqual((r.rcode, r.values("MX")), ("NOERROR", ["0 ."]))

    def test_nodata_and_empty_non_terminal(self):
        r = self.q("example.test.", "AAAA")
        self.assertEqual((r.rcode, r.answer), ("NOERROR", []))
        self.assertEqual([rr.type for rr in r.authority], ["SOA"])  # auto SOA: cacheable NODATA
        r = self.q("_tcp.mail.example.test.", "TLSA")
        self.assertEqual((r.rcode, r.answer), ("NOERROR", []))

    def test_nxdomain(self):
        for name in ("gone.test.", "deep.below.gone.test.", "nothing.example.test."):
            with self.subTest(name=name):
                self.assertEqual(self.q(name, "MX").rcode, "NXDOMAIN")
        self.assertEqual([rr.type for rr in self.q("nothing.example.test.", "A").authority],
                         ["SOA"])

    def test_servfail_is_immediate(self):
        for name in ("broken.test.", "mail.broken.test."):
            for tcp in (False, True):
                with self.subTest(name=name, tcp=tcp):
                    t0 = time.monotonic()
                    r = self.q(name, "MX", tcp=tcp)
                    self.assertEqual(r.rcode, "SERVFAIL")
                    self.assertLess(time.monotonic() - t0, 1.0)
        self.assertIn("broken.test.", self.dns.log())  # log-servfail / log-queries

    def test_refused_and_names_outside_the_zones(self):
        for name in ("closed.test.", "www.example.org.", "unserved.test."):
            with self.subTest(name=name):
                self.assertEqual(self.q(name, "A").rcode, "REFUSED")

    def test_drop_names_never_answer(self):
        t0 = time.monotonic()
        with self.assertRaises(DnsTimeout):
            self.q("blackhole.test.", "A", timeout=0.6)
        self.assertLess(time.monotonic() - t0, 2.0)
        self.assertEqual(self.q("example.test.", "MX").rcode, "NOERROR")  # still serving

    def test_tcp(self):
        r = self.q("_25._tcp.mail.example.test.", "TLSA", tcp=True)
        self.assertTrue(r.tcp)
        self.assertEqual(r.values("TLSA"), [f"3 1 1 {TLSA_HEX}"])

    def test_query_log(self):
        self.q("mail.example.test.", "AAAA")
        self.q("_25._tcp.mail.example.test.", "TLSA")
        self.assertIn(("mail.example.test.", "AAAA"), self.dns.queries())
        self.assertIn(("_25._tcp.mail.example.test.", "TLSA"), self.dns.queries())

    def test_address_stop_and_restart(self):
        self.assertEqual(self.dns.address, f"127.0.0.1@{self.dns.port}")
        pids = self.dns.pids()
        self.assertTrue(pids)
        self.dns.stop()
        self.assertEqual([p for p in pids if alive(p)], [])
        with self.assertRaises(DnsTimeout):
            self.q("example.test.", "MX", timeout=0.5)
        self.dns.records.append("new.example.test. 300 IN A 127.0.0.9")
        self.dns.restart()
        self.assertEqual(self.q("new.example.test.", "A").values("A"), ["127.0.0.9"])

    def test_start_moves_off_a_taken_port(self):
        other = DnsServer(self.dir, records=["taken.test. 300 IN A 127.0.0.2"])
        self.stoppers.append(other.stop)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
            squatter.bind(("127.0.0.1", other.port))
            first = other.port
            other.start()
            self.assertNotEqual(other.port, first)
            self.assertEqual(query(other.port, "taken.test.", "A").values("A"), ["127.0.0.2"])
            fixed = DnsServer(self.dir, records=["taken.test. 300 IN A 127.0.0.2"], port=first,
                              name="fixed")
            self.stoppers.append(fixed.stop)
            with self.assertRaisesRegex(AssertionError, "exited at start"):
                fixed.start()

    @unittest.skipUnless(libunbound_available(), "libunbound.so.8 not installed")
    def test_what_a_libunbound_client_sees(self):
        fwd = self.dns.address
        r = ub_resolve(fwd, "example.test", "MX")
        self.assertEqual((r["rcode"], r["havedata"], len(r["data"])), (0, 1, 2))
        self.assertEqual(ub_resolve(fwd, "nullmx.test", "MX")["data"], [b"\0\0\0"])  # 0 "."
        r = ub_resolve(fwd, "x.gone.test", "A")
        self.assertEqual((r["rcode"], r["nxdomain"]), (3, 1))
        r = ub_resolve(fwd, "broken.test", "MX")
        self.assertEqual((r["rcode"], r["havedata"], r["nxdomain"]), (2, 0, 0))
        self.assertLess(r["seconds"], 2.0)
        self.assertEqual(ub_resolve(fwd, "closed.test", "A")["rcode"], 2)  # REFUSED -> SERVFAIL
        # Without dropping libunbound's built-in "test." zone, every .test name is NXDOMAIN.
        r = ub_resolve(fwd, "example.test", "MX", drop_test_zone=False)
        self.assertEqual((r["rcode"], r["havedata"]), (3, 0))


class SignedZoneTest(E2ETest):

    def setUp(self):
        super().setUp()
        with cleanup_on_error(self):
            self.ca = TestCA(self.dir)
            self.leaf = self.ca.issue(["mail.secure.test"])
        self.records = ["secure.test. 300 IN MX 10 mail.secure.test.",
                        "mail.secure.test. 300 IN A 127.0.0.1",
                        tlsa_record("mail.secure.test", self.leaf.cert)]

    def server(self, **kw):
        s = SignedZoneServer(self.dir, records=kw.pop("records", self.records), **kw)
        self.stoppers.append(s.stop)
        return s.start()

    def resolver(self, **kw):
        v = ValidatingResolver(self.dir, **kw)
        self.stoppers.append(v.stop)
        return v.start()

    def test_nsd_serves_a_signed_zone(self):
        sz = self.server()
        r = query(sz.port, "_25._tcp.mail.secure.test.", "TLSA", dnssec=True)
        self.assertEqual(r.rcode, "NOERROR")
        self.assertTrue(r.aa)
        self.assertEqual(r.values("TLSA"), [tlsa_rdata(self.leaf.cert)])
        self.assertEqual(r.rrsig_covers(), {"TLSA"})
        keys = query(sz.port, "secure.test.", "DNSKEY", dnssec=True)
        self.assertEqual(sorted(k.split()[0] for k in keys.values("DNSKEY")), ["256", "257"])
        self.assertEqual(query(sz.port, "secure.test.", "MX").values("MX"),
                         ["10 mail.secure.test."])
        self.assertEqual(query(sz.port, "mail.secure.test.", "A", tcp=True).values("A"),
                         ["127.0.0.1"])
        nx = query(sz.port, "nope.secure.test.", "A", dnssec=True)
        self.assertEqual(nx.rcode, "NXDOMAIN")
        self.assertIn("NSEC", [rr.type for rr in nx.authority])
        self.assertEqual(sz.address, f"127.0.0.1@{sz.port}")
        pids = sz.pids()  # nsd forks a server and xfrd: all of them must go on stop()
        self.assertGreaterEqual(len(pids), 2)
        sz.stop()
        self.assertEqual([p for p in pids if alive(p)], [])
        with self.assertRaises(DnsTimeout):
            query(sz.port, "secure.test.", "SOA", timeout=0.5)

    def test_trust_anchor_lines(self):
        sz = SignedZoneServer(self.dir, records=self.records)  # keys exist before start()
        ds = sz.trust_anchor()
        self.assertRegex(ds, r"^secure\.test\.\s+IN\s+DS\s+\d+ 13 2 [0-9a-f]{64}$")
        self.assertRegex(sz.trust_anchor("DNSKEY"),
                         r"^secure\.test\.\s+IN\s+DNSKEY\s+257 3 13 \S+$")
        with open(sz.trust_anchor_file()) as f:
            self.assertEqual(f.read().strip(), ds)

    def test_validating_resolver_sets_ad(self):
        sz = self.server()
        v = self.resolver(signed=[sz])
        for name, rtype in (("_25._tcp.mail.secure.test.", "TLSA"), ("mail.secure.test.", "A"),
                            ("secure.test.", "MX")):
            with self.subTest(name=name):
                r = query(v.port, name, rtype)
                self.assertEqual(r.rcode, "NOERROR")
                self.assertTrue(r.ad, r)
                self.assertTrue(r.answer)
        r = query(v.port, "_25._tcp.mail.secure.test.", "TLSA", dnssec=True)
        self.assertTrue(r.ad)
        self.assertEqual(r.rrsig_covers(), {"TLSA"})
        r = query(v.port, "nope.secure.test.", "A")
        self.assertEqual((r.rcode, r.ad), ("NXDOMAIN", True))  # NSEC-proven
        self.assertEqual(query(v.port, "www.example.org.", "A").rcode, "REFUSED")

    def test_bogus_record_servfails_at_the_validator(self):
        bad = self.server(bogus=[("_25._tcp.mail.secure.test.", "TLSA")])
        self.assertEqual([c[:2] for c in bad.bogus_changes],
                         [("_25._tcp.mail.secure.test.", "TLSA")])
        # nsd serves the altered data with the stale signature...
        r = query(bad.port, "_25._tcp.mail.secure.test.", "TLSA", dnssec=True)
        self.assertEqual(r.values("TLSA"), [bad.bogus_changes[0][3]])
        self.assertNotEqual(r.values("TLSA"), [tlsa_rdata(self.leaf.cert)])
        # ...which a validator refuses, while the rest of the zone still validates.
        v = self.resolver(signed=[bad])
        self.assertEqual(query(v.port, "_25._tcp.mail.secure.test.", "TLSA").rcode, "SERVFAIL")
        r = query(v.port, "mail.secure.test.", "A")
        self.assertEqual((r.rcode, r.ad), ("NOERROR", True))
        cd = query(v.port, "_25._tcp.mail.secure.test.", "TLSA", cd=True)  # checking disabled
        self.assertEqual((cd.rcode, cd.ad), ("NOERROR", False))
        self.assertIn("validation failure", v.log())

    def test_bogus_true_alters_every_user_record(self):
        bad = self.server(bogus=True)
        self.assertEqual(sorted({c[1] for c in bad.bogus_changes}), ["A", "MX", "TLSA"])
        v = self.resolver(signed=[bad])
        for name, rtype in (("_25._tcp.mail.secure.test.", "TLSA"), ("mail.secure.test.", "A"),
                            ("secure.test.", "MX")):
            with self.subTest(name=name):
                self.assertEqual(query(v.port, name, rtype).rcode, "SERVFAIL")
        self.assertEqual(query(v.port, "ns.secure.test.", "A").rcode, "NOERROR")

    def test_signed_and_unsigned_zones_behind_one_resolver(self):
        sz = self.server()
        plain = DnsServer(self.dir, records=["example.test. 300 IN MX 10 mail.secure.test."])
        self.stoppers.append(plain.stop)
        plain.start()
        v = self.resolver(signed=[sz], unsigned={"example.test.": plain})
        r = query(v.port, "example.test.", "MX")
        self.assertEqual((r.rcode, r.ad, r.values("MX")), ("NOERROR", False,
                                                           ["10 mail.secure.test."]))
        r = query(v.port, "_25._tcp.mail.secure.test.", "TLSA")
        self.assertEqual((r.rcode, r.ad), ("NOERROR", True))

    def test_rsasha256_zone_validates(self):
        sz = self.server(zone="rsa.test.", algorithm="RSASHA256",
                         records=["rsa.test. 300 IN MX 10 mail.rsa.test.",
                                  "mail.rsa.test. 300 IN A 127.0.0.1"])
        self.assertRegex(sz.trust_anchor(), r"^rsa\.test\.\s+IN\s+DS\s+\d+ 8 2 [0-9a-f]{64}$")
        v = self.resolver(signed=[sz])
        r = query(v.port, "rsa.test.", "MX")
        self.assertEqual((r.rcode, r.ad), ("NOERROR", True))

    @unittest.skipUnless(libunbound_available(), "libunbound.so.8 not installed")
    def test_libunbound_validates_straight_against_nsd(self):
        good = self.server()
        bad = self.server(zone="bad.test.", bogus=True, records=[
            "mail.bad.test. 300 IN A 127.0.0.1",
            f"_25._tcp.mail.bad.test. 300 IN TLSA 3 1 1 {TLSA_HEX}"])
        r = ub_resolve(good.address, "_25._tcp.mail.secure.test", "TLSA",
                       trust_anchors=[good.trust_anchor()])
        self.assertEqual((r["rcode"], r["havedata"], r["secure"], r["bogus"]), (0, 1, 1, 0))
        self.assertEqual(r["data"][0][3:].hex(), spki_sha256(self.leaf.cert))
        r = ub_resolve(good.address, "nope.secure.test", "A", trust_anchors=[good.trust_anchor()])
        self.assertEqual((r["nxdomain"], r["secure"]), (1, 1))
        r = ub_resolve(good.address, "_25._tcp.mail.secure.test", "TLSA")  # no anchor: insecure
        self.assertEqual((r["havedata"], r["secure"], r["bogus"]), (1, 0, 0))
        r = ub_resolve(bad.address, "_25._tcp.mail.bad.test", "TLSA",
                       trust_anchors=[bad.trust_anchor("DNSKEY")])
        # Bogus: libunbound still hands over the (altered) data with rcode 0; only `bogus` says no.
        self.assertEqual((r["rcode"], r["havedata"], r["secure"], r["bogus"]), (0, 1, 0, 1))
        self.assertIn("signature", r["why_bogus"])
        # The same through a ValidatingResolver used as the forwarder.
        v = self.resolver(signed=[good])
        r = ub_resolve(v.address, "_25._tcp.mail.secure.test", "TLSA",
                       trust_anchors=[good.trust_anchor()])
        self.assertEqual((r["havedata"], r["secure"]), (1, 1))
        vb = self.resolver(signed=[bad])
        r = ub_resolve(vb.address, "_25._tcp.mail.bad.test", "TLSA")  # resolver validates
        self.assertEqual((r["rcode"], r["havedata"], r["bogus"]), (2, 0, 0))


class PkiTest(E2ETest):

    def setUp(self):
        super().setUp()
        with cleanup_on_error(self):
            self.ca = TestCA(self.dir)

    def text(self, cert):
        return run(["openssl", "x509", "-in", cert, "-noout", "-text"]).stdout

    def test_issued_leaf_verifies_with_the_ca(self):
        leaf = self.ca.issue(["mail.example.test", "mx.example.test"], ip="127.0.0.1")
        r = run(["openssl", "verify", "-CAfile", self.ca.cert, leaf.cert])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn(": OK", r.stdout)
        with open(leaf.chain) as f:
            self.assertEqual(f.read().count("BEGIN CERTIFICATE"), 2)
        r = run(["openssl", "verify", "-CAfile", self.ca.cert, "-verify_hostname",
                 "mx.example.test", "-purpose", "sslserver", leaf.cert])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # the key belongs to the certificate
        pub_from_key = run(["openssl", "pkey", "-in", leaf.key, "-pubout"]).stdout
        pub_from_cert = run(["openssl", "x509", "-in", leaf.cert, "-noout", "-pubkey"]).stdout
        self.assertEqual(pub_from_key, pub_from_cert)
        self.assertIn("CA:TRUE", self.text(self.ca.cert))
        self.assertIn("CA:FALSE", self.text(leaf.cert))

    def test_sans(self):
        leaf = self.ca.issue(["mail.example.test", "mx.example.test"], ip=["127.0.0.1", "::1"])
        san = run(["openssl", "x509", "-in", leaf.cert, "-noout", "-ext", "subjectAltName"]).stdout
        for want in ("DNS:mail.example.test", "DNS:mx.example.test", "IP Address:127.0.0.1",
                     "IP Address:0:0:0:0:0:0:0:1"):
            self.assertIn(want, san)
        text = self.text(leaf.cert)
        self.assertIn("id-ecPublicKey", text)
        self.assertIn("Public-Key: (256 bit)", text)
        self.assertIn("prime256v1", text)

    def test_spki_and_cert_digests_match_openssl(self):
        leaf = self.ca.issue(["mail.example.test"])
        want = run(f"openssl x509 -in '{leaf.cert}' -pubkey -noout | openssl pkey -pubin "
                   f"-outform DER | sha256sum").stdout.split()[0]
        self.assertEqual(self.ca.spki_sha256(leaf.cert), want)
        self.assertEqual(spki_sha256(leaf.chain), want)  # first cert of a chain file
        want = run(f"openssl x509 -in '{leaf.cert}' -outform DER | sha256sum").stdout.split()[0]
        self.assertEqual(self.ca.cert_sha256(leaf.cert), want)
        self.assertEqual(cert_sha256(leaf.cert), want)
        self.assertEqual(tlsa_rdata(leaf.cert, 3, 0, 1), f"3 0 1 {want}")
        self.assertEqual(tlsa_record("mail.example.test", leaf.cert),
                         f"_25._tcp.mail.example.test. 300 IN TLSA 3 1 1 "
                         f"{spki_sha256(leaf.cert)}")

    def test_self_signed(self):
        ss = self.ca.self_signed("mx.example.test")
        self.assertEqual(ss.chain, ss.cert)
        r = run(["openssl", "verify", "-CAfile", ss.cert, ss.cert])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = run(["openssl", "verify", "-CAfile", self.ca.cert, ss.cert])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("DNS:mx.example.test", run(["openssl", "x509", "-in", ss.cert, "-noout",
                                                  "-ext", "subjectAltName"]).stdout)

    def test_rsa_keys_and_30_day_validity(self):
        rsa = TestCA(self.dir, name="rsa-ca", key_type="rsa")
        leaf = rsa.issue("mail.example.test")
        self.assertIn("Public-Key: (2048 bit)", self.text(leaf.cert))
        self.assertIn("rsaEncryption", self.text(rsa.cert))
        for cert in (leaf.cert, rsa.cert):
            self.assertEqual(run(["openssl", "x509", "-in", cert, "-noout", "-checkend",
                                  str(29 * 86400)]).returncode, 0)
            self.assertNotEqual(run(["openssl", "x509", "-in", cert, "-noout", "-checkend",
                                     str(31 * 86400)]).returncode, 0)
        self.assertEqual(run(["openssl", "verify", "-CAfile", rsa.cert, leaf.cert]).returncode, 0)

    def test_tls_handshake_with_the_issued_chain(self):
        leaf = self.ca.issue(["mail.example.test"], ip="127.0.0.1")
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(leaf.chain, leaf.key)
        client_ctx = ssl.create_default_context(cafile=self.ca.cert)
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        lsock.settimeout(10)
        self.stoppers.append(lsock.close)
        errors = []

        def serve():
            try:
                conn, _ = lsock.accept()
                conn.settimeout(10)
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello")
            except Exception as e:  # reported by the main thread
                errors.append(e)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        with socket.create_connection(lsock.getsockname(), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="mail.example.test") as tls:
                self.assertEqual(tls.recv(5), b"hello")
                peer = tls.getpeercert(binary_form=True)
        t.join(10)
        self.assertEqual(errors, [])
        self.assertEqual(hashlib.sha256(peer).hexdigest(), cert_sha256(leaf.cert))


if __name__ == "__main__":
    main()
