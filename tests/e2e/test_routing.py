"""MX-aware routing against a real DNS server (unbound on loopback serving test zones).

MX hosts are reached on [delivery] port (Postfix's smtp_tcp_port) so no test listens on port 25;
the hosts live on distinct 127.0.0.x addresses.
"""
import re
import time

from dnsserver import DnsServer
from harness import E2ETest, free_port, main, wait_until

ME = "mx2.test.example"


class Routing(E2ETest):
    def start(self, records, domains, servfail=(), nxdomain=(), port=None, extra_queue=""):
        self.port = port or free_port()
        self.dns = DnsServer(self.dir, records=records, servfail_names=servfail,
                             nxdomain_zones=nxdomain).start()
        self.stoppers.append(self.dns.stop)
        self.b = self.backupmx(
            domains, hostname=ME,
            extra_toml=f'[dns]\nresolver = "{self.dns.address}"\n[delivery]\nport = {self.port}',
            extra_queue='probe_interval = "1s"\nretry_min = "1s"\nretry_max = "2s"\n'
                        + extra_queue).start()
        return self.b

    def send(self, rcpt, sender="alice@sender.test", n=1):
        s = self.b.smtp()
        for i in range(n):
            s.sendmail(sender, [rcpt], f"Subject: {rcpt} {i}\r\n\r\nbody\r\n")
        s.quit()

    def test_routes_to_the_preferred_mx_never_to_ourselves_or_worse(self):
        port = free_port()
        primary = self.sink(host="127.0.0.2", port=port).start()
        worse = self.sink(host="127.0.0.3", port=port).start()
        self.start([
            "example.test. 300 IN MX 10 mail.example.test.",
            f"example.test. 300 IN MX 20 {ME}.",
            "example.test. 300 IN MX 30 worse.example.test.",
            "mail.example.test. 300 IN A 127.0.0.2",
            "worse.example.test. 300 IN A 127.0.0.3",
            f"{ME}. 300 IN A 127.0.0.1",
        ], {"example.test": None}, port=port)
        self.send("bob@example.test", n=3)
        wait_until(lambda: len(primary.messages()) == 3, what="3 at the primary")
        self.assertEqual(worse.messages(), [])
        self.assertRegex(self.b.log(), r"delivered id=\S+ .*primary=mail.example.test\[127.0.0.2\]")

    def test_never_relays_to_an_mx_with_our_preference_or_higher(self):
        port = free_port()
        peer = self.sink(host="127.0.0.3", port=port).start()  # same preference as ours: no
        self.start([
            "example.test. 300 IN MX 10 dead.example.test.",
            f"example.test. 300 IN MX 20 {ME}.",
            "example.test. 300 IN MX 20 peer.example.test.",
            "dead.example.test. 300 IN A 127.0.0.2",
            "peer.example.test. 300 IN A 127.0.0.3",
        ], {"example.test": None}, port=port)
        self.send("bob@example.test")
        self.b.wait_log(r"deferred id=\S+ .*error=\"connect to dead.example.test\[127.0.0.2\]")
        time.sleep(1.5)
        self.assertEqual(peer.messages(), [])
        self.assertEqual(len(self.b.queue()), 1)

    def test_every_address_of_a_host_then_the_next_host(self):
        port = free_port()
        self.start([
            "example.test. 300 IN MX 10 first.example.test.",
            "example.test. 300 IN MX 15 second.example.test.",
            "first.example.test. 300 IN A 127.0.0.4",
            "first.example.test. 300 IN AAAA ::1",
            "second.example.test. 300 IN A 127.0.0.5",
        ], {"example.test": None}, port=port)
        self.send("bob@example.test")
        # Nothing listens yet: the deferral names every address tried, in the order tried.
        self.b.wait_log(r"deferred id=")
        tried = re.findall(r"connect to (\S+?):%d: Connection refused" % port,
                           self.b.queue()[0]["last_error"])
        self.assertEqual(tried, ["first.example.test[::1]", "first.example.test[127.0.0.4]",
                                 "second.example.test[127.0.0.5]"])
        second = self.sink(host="127.0.0.5", port=port).start()
        wait_until(lambda: second.messages(), what="delivery to the second MX")
        self.b.wait_log(r"delivered id=\S+ .*primary=second.example.test\[127.0.0.5\]")

    def test_equal_preferences_share_the_load(self):
        port = free_port()
        a = self.sink(host="127.0.0.6", port=port).start()
        b = self.sink(host="127.0.0.7", port=port).start()
        self.start([
            "example.test. 300 IN MX 10 a.example.test.",
            "example.test. 300 IN MX 10 b.example.test.",
            f"example.test. 300 IN MX 20 {ME}.",
            "a.example.test. 300 IN A 127.0.0.6",
            "b.example.test. 300 IN A 127.0.0.7",
        ], {"example.test": None}, port=port)
        self.send("bob@example.test", n=40)
        wait_until(lambda: len(a.messages()) + len(b.messages()) == 40, timeout=60, what="40")
        self.assertGreater(len(a.messages()), 3)
        self.assertGreater(len(b.messages()), 3)

    def test_no_mx_uses_the_domain_address(self):
        port = free_port()
        sink = self.sink(host="127.0.0.8", port=port).start()
        self.start(["example.test. 300 IN A 127.0.0.8"], {"example.test": None}, port=port)
        self.send("bob@example.test")
        wait_until(lambda: sink.messages(), what="delivery to the A record")

    def test_null_mx_bounces_with_5_1_10(self):
        port = free_port()
        senders = self.sink(host="127.0.0.9", port=port).start()
        self.start([
            "example.test. 300 IN MX 0 .",
            "sender.test. 300 IN MX 10 mail.sender.test.",
            "mail.sender.test. 300 IN A 127.0.0.9",
        ], {"example.test": None}, port=port)
        self.send("bob@example.test")
        wait_until(lambda: [m for m in senders.messages() if m["sender"] == ""], what="DSN")
        dsn = senders.messages()[0]["content"].decode()
        self.assertIn("Status: 5.1.10", dsn)
        self.assertIn("null MX", dsn)
        self.assertEqual(senders.messages()[0]["recipients"], ["alice@sender.test"])

    def test_cname_mx_target_followed_and_logged(self):
        port = free_port()
        sink = self.sink(host="127.0.0.10", port=port).start()
        self.start([
            "example.test. 300 IN MX 10 alias.example.test.",
            "alias.example.test. 300 IN CNAME real.example.test.",
            "real.example.test. 300 IN A 127.0.0.10",
        ], {"example.test": None}, port=port)
        self.send("bob@example.test")
        wait_until(lambda: sink.messages(), what="delivery through the CNAME")
        self.assertRegex(self.b.log(), r"warning routing example.test: MX target alias.example.test"
                                       r" is a CNAME for real.example.test")

    def test_servfail_defers_and_retries(self):
        self.start([], {"broken.test": None}, servfail=["broken.test."])
        self.send("bob@broken.test")
        self.b.wait_log(r"deferred id=\S+ .*error=\"MX lookup for broken.test: temporary failure")
        self.b.wait_log(r"MX lookup for broken.test", count=2)  # retried, still queued
        self.assertEqual(len(self.b.queue()), 1)

    def test_nxdomain_is_loud_but_deferred_not_bounced(self):
        self.start([], {"gone.test": None}, nxdomain=["gone.test."])
        self.send("bob@gone.test")
        self.b.wait_log(r"warning routing gone.test: domain gone.test does not exist \(NXDOMAIN\)")
        time.sleep(1.5)
        q = self.b.queue()
        self.assertEqual(len(q), 1)
        self.assertIn("NXDOMAIN", q[0]["last_error"])
        self.assertNotIn("bounced", self.b.log())

    def test_nxdomain_deferred_until_max_age_then_expired_with_a_dsn(self):
        senders = self.sink().start()  # sender.test's primary: the DSN arrives here
        self.start([], {"gone.test": None, "sender.test": f"127.0.0.1:{senders.port}"},
                   nxdomain=["gone.test."], extra_queue='max_age = "6s"')
        t0 = time.monotonic()
        self.send("bob@gone.test")
        self.b.wait_log(r"deferred id=\S+ .*NXDOMAIN")
        self.b.wait_log(r"warning routing gone.test: domain gone.test does not exist "
                        r"\(NXDOMAIN\)", count=3)  # and asked again: not given up
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(len(self.b.queue()), 1)
        self.assertEqual(senders.messages(), [])
        dsn = wait_until(lambda: senders.messages(), timeout=20, what="the expiry DSN")[0]
        self.assertGreaterEqual(time.monotonic() - t0, 6 - 1)  # not before max_age
        self.assertEqual((dsn["sender"], dsn["recipients"]), ("", ["alice@sender.test"]))
        c = dsn["content"].decode()
        self.assertIn("Final-Recipient: rfc822; bob@gone.test", c)
        self.assertIn("Status: 4.4.7", c)
        self.assertIn("NXDOMAIN", c)  # the last error, for the sender to see why
        wait_until(lambda: self.b.queue() == [], what="the message gone")
        log = self.b.log()
        self.assertRegex(log, r"expired id=\S+ from=<alice@sender.test> to=<bob@gone.test> "
                              r"domain=gone.test")
        self.assertNotIn("bounced id=", log)

    def test_primary_forms_host_name_bracketed_host_and_ip(self):
        port = free_port()
        s1 = self.sink(host="127.0.0.11", port=port).start()
        s2 = self.sink(host="127.0.0.12", port=port).start()
        s3 = self.sink(host="127.0.0.13", port=port).start()
        s4 = self.scripted(host="::1", port=port, family=__import__("socket").AF_INET6).start()
        self.start([
            "mail.one.test. 300 IN A 127.0.0.11",
            "mail.two.test. 300 IN A 127.0.0.12",
        ], {"one.test": f"mail.one.test:{port}", "two.test": f"[mail.two.test]:{port}",
            "three.test": f"127.0.0.13:{port}", "four.test": f"[::1]:{port}"}, port=port)
        for d in ("one", "two", "three", "four"):
            self.send(f"bob@{d}.test")
        wait_until(lambda: s1.messages() and s2.messages() and s3.messages() and s4.transactions,
                   what="each primary form")
        self.assertRegex(self.b.log(), r"primary=mail.one.test\[127.0.0.11\]")
        self.assertRegex(self.b.log(), r"primary=::1\[::1\]")

    def test_loop_when_we_are_the_best_mx(self):
        self.start([f"example.test. 300 IN MX 10 {ME}."], {"example.test": None})
        self.send("bob@example.test")
        self.b.wait_log(r"mail for example.test loops back to myself")
        self.assertEqual(len(self.b.queue()), 1)


if __name__ == "__main__":
    main()
