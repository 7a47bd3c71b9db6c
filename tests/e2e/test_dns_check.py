"""backupmx dns-check against test zones served by unbound: every check, good and bad."""
import json
import subprocess

from dnsserver import DnsServer
from harness import BIN, E2ETest, free_port, main

ME = "mx2.provider.test"


def ns_pair(zone, a="127.0.5.1", b="127.0.6.1"):
    return [f"{zone}. 300 IN NS ns1.{zone}.", f"{zone}. 300 IN NS ns2.{zone}.",
            f"ns1.{zone}. 300 IN A {a}", f"ns2.{zone}. 300 IN A {b}"]


class DnsCheck(E2ETest):
    def setUp(self):
        super().setUp()
        self.port = free_port()
        self.primary = self.sink(host="127.0.0.31", port=self.port).start()
        records = [f"{ME}. 300 IN A 127.0.1.32"]
        def zone(name, mx, extra=(), ns=True):
            records.extend(f"{name}. 300 IN MX {m}" for m in mx)
            records.extend(extra)
            if ns:
                records.extend(ns_pair(name))
        zone("good.test", ["10 mail.good.test.", f"20 {ME}."],
             ["mail.good.test. 300 IN A 127.0.0.31"])
        zone("notlisted.test", ["10 mail.notlisted.test."], ["mail.notlisted.test. 300 IN A 127.0.0.31"])
        zone("backupfirst.test", [f"5 {ME}.", "10 mail.backupfirst.test."],
             ["mail.backupfirst.test. 300 IN A 127.0.0.31"])
        zone("cname.test", ["10 alias.cname.test.", f"20 {ME}."],
             ["alias.cname.test. 300 IN CNAME mail.good.test."])
        zone("ipmx.test", ["10 127.0.0.31.", f"20 {ME}."])
        zone("noaddr.test", ["10 mail.noaddr.test.", f"20 {ME}."])
        zone("share.test", ["10 a.share.test.", "10 b.share.test.", f"20 {ME}."],
             ["a.share.test. 300 IN A 127.0.0.31", "b.share.test. 300 IN A 127.0.0.31"])
        zone("samehost.test", ["10 mail.samehost.test.", f"20 {ME}."],
             ["mail.samehost.test. 300 IN A 127.0.1.32"])
        zone("samenet.test", ["10 mail.samenet.test.", f"20 {ME}."],
             ["mail.samenet.test. 300 IN A 127.0.1.99"])
        zone("onens.test", ["10 mail.good.test.", f"20 {ME}."],
             ["onens.test. 300 IN NS ns1.onens.test.", "ns1.onens.test. 300 IN A 127.0.5.1"],
             ns=False)
        zone("nsnet.test", ["10 mail.good.test.", f"20 {ME}."],
             ns_pair("nsnet.test", "127.0.7.1", "127.0.7.2"), ns=False)
        zone("down.test", ["10 mail.down.test.", f"20 {ME}."],
             ["mail.down.test. 300 IN A 127.0.0.33"])
        zone("nullmx.test", ["0 ."])
        records += ["nomx.test. 300 IN A 127.0.0.31"] + ns_pair("nomx.test")
        self.dns = DnsServer(self.dir, records=records, nxdomain_zones=["gone.test."]).start()
        self.stoppers.append(self.dns.stop)
        self.b = self.backupmx({"good.test": None, "share.test": None}, hostname=ME,
                               extra_toml=f'[dns]\nresolver = "{self.dns.address}"\n'
                                          f'[delivery]\nport = {self.port}')

    def check(self, domain, json_out=False):
        args = [BIN, "dns-check", domain, "--config", self.b.config] + (["--json"] if json_out else [])
        r = subprocess.run(args, capture_output=True, text=True, timeout=120)
        return r.returncode, r.stdout

    def levels(self, domain):
        code, out = self.check(domain, json_out=True)
        rep = json.loads(out)
        self.assertEqual(rep["ok"], code == 0)
        return code, rep, {(c["check"], c["level"]) for c in rep["checks"]}, rep["checks"]

    def test_good_domain_passes_every_check(self):
        code, out = self.check("good.test")
        self.assertEqual(code, 0, out)
        for name in ("mx-present", "backup-listed", "primary-preferred", "mx-target",
                     "independence", "ns", "primary-smtp", "configured"):
            self.assertRegex(out, rf"(?m)^ok\s+{name}\s", name)
        self.assertNotRegex(out, r"(?m)^(error|warning) ")
        self.assertIn(f"publish: good.test. 3600 IN MX 20 {ME}.", out)
        self.assertIn("result: 0 errors, 0 warnings", out)

    def test_json_output(self):
        code, rep, lv, checks = self.levels("good.test")
        self.assertEqual(code, 0)
        self.assertEqual(rep["domain"], "good.test")
        self.assertEqual(rep["publish"], f"good.test. 3600 IN MX 20 {ME}.")
        for c in checks:
            self.assertEqual(set(c), {"level", "check", "message", "fix"})

    def test_backup_not_listed(self):
        code, rep, lv, checks = self.levels("notlisted.test")
        self.assertEqual(code, 1)
        self.assertIn(("backup-listed", "error"), lv)
        self.assertIn(("configured", "error"), lv)
        self.assertEqual(rep["publish"], f"notlisted.test. 3600 IN MX 20 {ME}.")
        fix = [c["fix"] for c in checks if c["check"] == "backup-listed"][0]
        self.assertIn(f"notlisted.test. 3600 IN MX 20 {ME}.", fix)

    def test_a_domain_added_at_run_time_counts_as_configured(self):
        self.assertIn(("configured", "error"), self.levels("notlisted.test")[2])
        self.b.cli("domain", "add", "notlisted.test", "mail.notlisted.test")  # kept in the store
        code, rep, lv, _ = self.levels("notlisted.test")
        self.assertIn(("configured", "ok"), lv)
        self.assertIn(("backup-listed", "error"), lv)  # the DNS is still to be fixed

    def test_backup_preferred_over_primary(self):
        code, rep, lv, _ = self.levels("backupfirst.test")
        self.assertEqual(code, 1)
        self.assertIn(("primary-preferred", "error"), lv)

    def test_cname_ip_literal_and_addressless_targets(self):
        for d, word in (("cname.test", "CNAME"), ("ipmx.test", "IP address"),
                        ("noaddr.test", "no A/AAAA")):
            code, rep, lv, checks = self.levels(d)
            self.assertEqual(code, 1, d)
            msgs = [c["message"] for c in checks if c["check"] == "mx-target" and c["level"] == "error"]
            self.assertTrue(any(word in m for m in msgs), (d, msgs))

    def test_equal_preferences_reported_as_load_sharing(self):
        code, rep, lv, checks = self.levels("share.test")
        self.assertEqual(code, 0, checks)
        msg = [c["message"] for c in checks if c["check"] == "load-sharing"][0]
        self.assertIn("a.share.test", msg)
        self.assertIn("b.share.test", msg)

    def test_same_host_is_an_error_same_network_a_warning(self):
        code, rep, lv, _ = self.levels("samehost.test")
        self.assertIn(("independence", "error"), lv)
        code, rep, lv, _ = self.levels("samenet.test")
        self.assertIn(("independence", "warning"), lv)

    def test_name_servers_count_and_networks(self):
        code, rep, lv, _ = self.levels("onens.test")
        self.assertIn(("ns", "error"), lv)
        code, rep, lv, _ = self.levels("nsnet.test")
        self.assertIn(("ns", "warning"), lv)

    def test_primary_not_answering_smtp(self):
        code, rep, lv, checks = self.levels("down.test")
        self.assertEqual(code, 1)
        self.assertIn(("primary-smtp", "error"), lv)

    def test_missing_null_and_nonexistent(self):
        for d in ("nomx.test", "nullmx.test", "gone.test"):
            code, rep, lv, checks = self.levels(d)
            self.assertEqual(code, 1, d)
            self.assertIn(("mx-present", "error"), lv, d)
        code, out = self.check("nullmx.test")
        self.assertIn("null MX", out)
        code, out = self.check("gone.test")
        self.assertIn("NXDOMAIN", out)


if __name__ == "__main__":
    main()
