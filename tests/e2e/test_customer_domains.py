"""Customers cannot make backupmx serve any domain (issue 14 point 1). A customer's POST of a
domain is a claim: nothing is accepted for it (RCPT 550 5.7.1, as for any unknown domain) until
its live DNS proves it — its MX set names this backup (while nobody is served it here), or TXT
_backupmx.DOMAIN holds the token the API returned — or an operator approves it. Claiming a
domain that is served already answers exactly as claiming a new one (the API is no oracle), and
a customer's primary may not be a loopback, private or link-local address unless
[admin] customer_private_primaries. Real DNS: unbound on loopback."""
import time

from dnsserver import DnsServer
from harness import AdminClient, E2ETest, add_user, free_port, main, wait_until

ME = "mx2.test.example"


class Claims(E2ETest):
    def start(self, records=(), private_ok=True):
        self.dns = DnsServer(self.dir, records=list(records)).start()
        self.stoppers.append(self.dns.stop)
        self.p = self.scripted().start()  # a primary that takes every recipient
        self.aport = free_port()
        admin = (f'[admin]\nlisten = ["127.0.0.1:{self.aport}"]\nclaim_check_interval = "1s"\n'
                 + ("customer_private_primaries = true\n" if private_ok else ""))
        self.b = self.backupmx({"example.test": f"127.0.0.1:{self.p.port}"}, hostname=ME,
                               extra_toml=f'[dns]\nresolver = "{self.dns.address}"\n' + admin,
                               extra_queue='probe_interval = "1s"\nretry_min = "1s"')
        ann_pw = add_user(self.b, "ann", "operator")
        carl_pw = add_user(self.b, "carl", "customer")
        dora_pw = add_user(self.b, "dora", "customer")
        self.b.start()
        self.ann, self.carl, self.dora = (AdminClient(self.aport) for _ in range(3))
        for client, user, pw in ((self.ann, "ann", ann_pw), (self.carl, "carl", carl_pw),
                                 (self.dora, "dora", dora_pw)):
            self.assertEqual(client.login(user, pw), 303)
        return self.b

    def rcpt(self, address):
        s = self.b.smtp()
        s.mail("alice@sender.test")
        code, msg = s.rcpt(address)
        s.quit()
        return code, msg.decode()

    def claim(self, client, name, primary=None):
        status, r = client.api("POST", "/api/v1/domains",
                               {"name": name, "primary": primary or f"127.0.0.1:{self.p.port}"})
        return status, r

    def served_to(self, client):
        return [d["name"] for d in client.api("GET", "/api/v1/domains")[1]["domains"]]

    def test_a_claim_not_proven_is_never_served(self):
        self.start()
        status, r = self.claim(self.carl, "victim-bank.test")
        self.assertEqual(status, 201, r)
        self.assertEqual(r["domain"]["state"], "pending")
        self.assertEqual(r["domain"]["verify"]["txt_name"], "_backupmx.victim-bank.test")
        self.assertGreater(len(r["domain"]["verify"]["txt_value"]), 16)
        time.sleep(3)  # three checks of the claim against DNS, which says nothing
        code, msg = self.rcpt("anyone@victim-bank.test")
        self.assertEqual(code, 550, msg)
        self.assertIn("5.7.1", msg)
        self.assertNotIn("victim-bank.test", self.served_to(self.carl))
        claims = self.carl.api("GET", "/api/v1/domains")[1]["claims"]
        self.assertEqual([c["name"] for c in claims], ["victim-bank.test"])
        self.assertEqual(self.dora.api("GET", "/api/v1/domains")[1]["claims"], [])  # carl's own
        self.assertEqual(self.p.transactions, [])

    def test_the_mx_set_naming_this_backup_proves_a_new_domain(self):
        self.start(records=["cust.test. 300 IN MX 10 mail.cust.test.",
                            f"cust.test. 300 IN MX 20 {ME}."])
        self.assertEqual(self.claim(self.carl, "cust.test")[0], 201)
        wait_until(lambda: "cust.test" in self.served_to(self.carl), timeout=10,
                   what="the claim proven by the MX set")
        self.assertEqual(self.rcpt("bob@cust.test")[0], 250)
        self.assertIn("claim of cust.test by carl proven (its MX set names mx2.test.example)",
                      self.b.log())

    def test_the_txt_token_proves_a_claim(self):
        self.start(records=['shop.test. 1 IN TXT "nothing yet"',
                            '_backupmx.shop.test. 1 IN TXT "not the token"'])
        status, r = self.claim(self.carl, "shop.test")
        token = r["domain"]["verify"]["txt_value"]
        time.sleep(2.5)
        self.assertEqual(self.rcpt("bob@shop.test")[0], 550)  # a wrong token proves nothing
        self.dns.records = [f'_backupmx.shop.test. 1 IN TXT "{token}"']
        self.dns.restart()
        wait_until(lambda: "shop.test" in self.served_to(self.carl), timeout=15,
                   what="the claim proven by its TXT token")
        self.assertEqual(self.rcpt("bob@shop.test")[0], 250)

    def test_claiming_a_served_domain_answers_like_claiming_a_new_one(self):
        other = self.scripted().start()
        self.start(records=["served.test. 300 IN MX 10 mail.served.test.",
                            f"served.test. 300 IN MX 20 {ME}."])
        self.assertEqual(self.ann.api("POST", "/api/v1/domains",
                                      {"name": "served.test",
                                       "primary": f"127.0.0.1:{other.port}",
                                       "recipients": "any"})[0], 201)
        s1, taken = self.claim(self.dora, "served.test")
        s2, fresh = self.claim(self.dora, "never-seen.test")
        self.assertEqual((s1, s2), (201, 201))
        self.assertEqual(sorted(taken), sorted(fresh))
        self.assertEqual(sorted(taken["domain"]), sorted(fresh["domain"]))
        self.assertEqual(taken["domain"]["state"], fresh["domain"]["state"])
        self.assertEqual(taken["mx_record"], f"served.test. 3600 IN MX 20 {ME}.")
        time.sleep(3)  # its MX set names us, but it is served already: that proves nothing
        self.assertNotIn("served.test", self.served_to(self.dora))
        status, d = self.ann.api("GET", "/api/v1/domains/served.test")
        self.assertEqual(d["primary"], f"127.0.0.1:{other.port}")  # unchanged
        s = self.b.smtp()
        s.sendmail("alice@sender.test", ["bob@served.test"], "Subject: x\r\n\r\nx\r\n")
        s.quit()
        wait_until(lambda: len(other.transactions) == 1, what="delivery to its own primary")
        self.assertEqual(self.p.transactions, [])

    def test_an_operator_approves_a_claim_by_hand(self):
        self.start()
        self.assertEqual(self.claim(self.carl, "approved.test")[0], 201)
        self.assertEqual(self.carl.api("POST", "/api/v1/domains/approved.test/approve")[0], 403)
        status, r = self.ann.api("POST", "/api/v1/domains/approved.test/approve")
        self.assertEqual((status, r["state"]), (200, "active"), r)
        self.assertEqual(self.rcpt("bob@approved.test")[0], 250)
        self.assertIn("approved.test", self.served_to(self.carl))
        audit = [e["action"] for e in self.ann.api("GET", "/api/v1/audit")[1]["entries"]]
        self.assertIn("domain.approve", audit)

    def test_a_customer_withdraws_a_claim(self):
        self.start()
        self.claim(self.carl, "gone.test")
        self.assertEqual(self.carl.api("DELETE", "/api/v1/domains/gone.test")[0], 204)
        self.assertEqual(self.carl.api("GET", "/api/v1/domains")[1]["claims"], [])

    def test_a_customers_primary_may_not_be_a_private_address(self):
        self.start(records=["inside.test. 300 IN A 172.16.0.5"], private_ok=False)
        for primary in ("127.0.0.1:2525", "10.1.2.3", "192.168.1.1:25", "169.254.0.1",
                        "[::1]:25", "[fe80::1]:25", "[fd00::1]:25", "100.64.0.1",
                        "inside.test:25"):
            status, r = self.claim(self.carl, "scan.test", primary)
            self.assertEqual(status, 400, (primary, r))
            self.assertIn("customer_private_primaries", r["error"], primary)
        self.assertEqual(self.claim(self.carl, "scan.test", "192.0.2.1:25")[0], 201)
        # an operator's word is the operator's: a loopback primary is fine
        self.assertEqual(self.ann.api("POST", "/api/v1/domains",
                                      {"name": "op.test", "primary": "127.0.0.1:2599"})[0], 201)


if __name__ == "__main__":
    main()
