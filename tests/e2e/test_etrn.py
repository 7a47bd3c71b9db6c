"""ETRN (RFC 1985): the primary, back up, asks for its mail and gets it at once; nobody else can
make backupmx send (or find out what it holds), and bad requests get the RFC's codes."""
import time

from dnsserver import DnsServer
from harness import E2ETest, Raw, free_port, main, wait_until

SLOW = 'probe_interval = "1h"\nretry_min = "1h"\nretry_max = "2h"'  # only ETRN starts delivery


class Etrn(E2ETest):
    def setup_held(self, domain_extra=None):
        """A message held for example.test, whose primary (127.0.0.1) is down."""
        self.primary = self.scripted()
        spec = {"primary": f"127.0.0.1:{self.primary.port}"}
        spec.update(domain_extra or {})
        self.b = self.backupmx({"example.test": spec, "other.test": "127.0.0.9:25"},
                               extra_queue=SLOW)
        if domain_extra:  # an array, which the harness writes as a string: fix it up
            with open(self.b.config) as f:
                text = f.read()
            with open(self.b.config, "w") as f:
                f.write(text.replace('etrn_networks = "127.0.0.3/32"',
                                     'etrn_networks = ["127.0.0.3/32"]'))
        self.b.start()
        s = self.b.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test"], "Subject: held\r\n\r\nheld\r\n")
        s.quit()
        self.b.wait_log(r"deferred id=")  # first try failed: now it waits an hour
        self.primary.start()

    def etrn(self, arg, source="127.0.0.1", helo=True):
        r = Raw(self.b.port, source=source)
        r.reply()
        if helo:
            ehlo = r.cmd("EHLO primary.example.test")
            self.assertIn("250-ETRN", ehlo)
        out = r.cmd(f"ETRN {arg}" if arg is not None else "ETRN")
        r.cmd("QUIT")
        r.close()
        return out

    def test_primary_asks_and_gets_its_mail_at_once(self):
        self.setup_held()
        reply = self.etrn("example.test")
        self.assertTrue(reply.startswith("250 2.0.0 OK, queuing for node example.test started"),
                        reply)
        wait_until(lambda: self.primary.transactions, timeout=10, what="delivery after ETRN")
        self.assertIn(b"held", self.primary.transactions[0]["data"])
        self.b.wait_log(r"ETRN example.test from \[127.0.0.1\]: delivery started")
        wait_until(lambda: self.b.queue() == [], what="empty queue")
        # Nothing left: the RFC's 251.
        self.assertTrue(self.etrn("@example.test").startswith("251 2.0.0 OK, no messages"))

    def test_other_clients_are_refused_and_nothing_moves(self):
        self.setup_held()
        reply = self.etrn("example.test", source="127.0.0.2")
        self.assertTrue(reply.startswith("459 4.7.1 Node example.test not allowed"), reply)
        self.assertIn("127.0.0.2 is not its primary", reply)
        self.assertTrue(self.etrn("unknown.test").startswith("459 4.7.1 Node unknown.test not "
                                                             "allowed: no mail is kept here"))
        # other.test's primary is 127.0.0.9: 127.0.0.1 may not ask for other.test's mail
        self.assertTrue(self.etrn("other.test").startswith("459 "))
        self.assertEqual(self.primary.transactions, [])
        self.assertEqual(len(self.b.queue()), 1)

    def test_etrn_networks_allow_another_client(self):
        self.setup_held({"etrn_networks": "127.0.0.3/32"})
        self.assertTrue(self.etrn("example.test", source="127.0.0.3").startswith("250 "))
        wait_until(lambda: self.primary.transactions, timeout=10, what="delivery after ETRN")

    def test_an_mx_host_of_a_domain_routed_by_mx_may_ask(self):
        # mx.test has no primary: its mail goes to its MX hosts (mail1 and mail2), whose
        # addresses may ask for it; any other address may not.
        port = free_port()
        dns = DnsServer(self.dir, records=[
            "mx.test. 300 IN MX 10 mail1.mx.test.",
            "mx.test. 300 IN MX 20 mail2.mx.test.",
            "mx.test. 300 IN MX 30 mx2.test.example.",  # ourselves: never a target
            "mail1.mx.test. 300 IN A 127.0.0.41",
            "mail2.mx.test. 300 IN A 127.0.0.42",
            "mx2.test.example. 300 IN A 127.0.0.43",
        ]).start()
        self.stoppers.append(dns.stop)
        self.b = self.backupmx({"mx.test": None},
                               extra_toml=f'[dns]\nresolver = "{dns.address}"\n'
                                          f'[delivery]\nport = {port}',
                               extra_queue=SLOW).start()
        s = self.b.smtp()
        s.sendmail("alice@sender.test", ["bob@mx.test"], "Subject: held\r\n\r\nheld\r\n")
        s.quit()
        self.b.wait_log(r"deferred id=")  # both MX hosts down: now it waits an hour
        self.primary = self.scripted(host="127.0.0.42", port=port).start()  # mail2 comes up
        for other in ("127.0.0.43", "127.0.0.44"):  # our own MX address, and a stranger
            reply = self.etrn("mx.test", source=other)
            self.assertTrue(reply.startswith("459 4.7.1 Node mx.test not allowed"), reply)
        time.sleep(1)
        self.assertEqual(self.primary.transactions, [])
        reply = self.etrn("mx.test", source="127.0.0.42")  # an MX host of mx.test
        self.assertTrue(reply.startswith("250 2.0.0 OK, queuing for node mx.test started"), reply)
        wait_until(lambda: self.primary.transactions, timeout=10, what="delivery after ETRN")
        self.assertEqual(self.primary.transactions[0]["rcpts"], ["bob@mx.test"])
        self.b.wait_log(r"ETRN mx.test from \[127.0.0.42\]: delivery started")

    def test_bad_requests_get_the_rfc_codes(self):
        self.setup_held()
        self.assertTrue(self.etrn(None).startswith("501 5.5.4 Syntax: ETRN domain"))
        self.assertTrue(self.etrn("bad..domain").startswith("501 "))
        self.assertTrue(self.etrn("#queue").startswith("458 4.7.0 Unable to queue messages"))
        self.assertTrue(self.etrn("example.test", helo=False).startswith("503 5.5.1"))
        r = Raw(self.b.port)
        r.reply()
        r.cmd("EHLO primary.example.test")
        r.cmd("MAIL FROM:<a@sender.test>")
        self.assertTrue(r.cmd("ETRN example.test").startswith("503 5.5.1 Error: MAIL "
                                                             "transaction in progress"))
        r.close()
        self.assertEqual(self.primary.transactions, [])


if __name__ == "__main__":
    main()
