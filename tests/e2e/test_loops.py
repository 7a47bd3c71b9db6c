"""Mail loops (issue 14 point 2). A domain whose primary is this server used to re-accept one
message thousands of times a minute. Now: a message with `[smtp] max_hops` Received: headers
(ours included) gets 554 5.4.6 at the end of DATA, and a primary that resolves to one of this
server's own SMTP listeners is refused at start, at `domain add` (CLI and API) and by dns-check;
a route that comes back here at delivery time (an MX preferred over us that points at us) defers
with "loops back to myself" and is never delivered to ourselves."""
import json
import re
import smtplib
import time

from dnsserver import DnsServer
from harness import AdminClient, E2ETest, add_user, free_port, main, wait_until

ME = "mx2.test.example"


def with_received(n, subject="hops"):
    hops = "".join(f"Received: from hop{i}.test by hop{i + 1}.test; "
                   f"Mon, 30 Nov 2026 10:00:{i % 60:02d} +0000\r\n" for i in range(n))
    return hops + f"Subject: {subject}\r\n\r\nbody\r\n"


class MaxHops(E2ETest):
    def send(self, b, n):
        s = b.smtp()
        try:
            s.sendmail("a@sender.test", ["bob@example.test"], with_received(n, f"{n} hops"))
            return 250, ""
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error.decode()
        finally:
            s.quit()

    def test_49_received_headers_pass_and_50_get_554_5_4_6(self):
        # ours is the 50th: at the limit (50, Postfix's hopcount_limit) the message is a loop
        sink = self.sink().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{sink.port}"}).start()
        self.assertEqual(self.send(b, 48)[0], 250)  # 48 + ours = 49
        code, text = self.send(b, 49)  # 49 + ours = 50
        self.assertEqual(code, 554, text)
        self.assertTrue(text.startswith("5.4.6 Too many hops: 50 Received: headers"), text)
        self.assertIn("smtp.max_hops = 50", text)
        code, text = self.send(b, 200)
        self.assertEqual(code, 554, text)
        wait_until(lambda: len(sink.messages()) == 1, what="the 49-hop message delivered")
        time.sleep(0.5)
        self.assertEqual(len(sink.messages()), 1, "a looping message was delivered")

    def test_max_hops_key_sets_the_limit(self):
        sink = self.sink().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{sink.port}"},
                          extra_smtp="max_hops = 5").start()
        self.assertEqual(self.send(b, 3)[0], 250)  # 3 + ours = 4
        code, text = self.send(b, 4)
        self.assertEqual(code, 554, text)
        self.assertIn("smtp.max_hops = 5", text)


class SelfPrimary(E2ETest):
    def test_a_primary_that_is_our_own_listener_stops_the_start(self):
        port = free_port()
        b = self.backupmx({"loop.test": f"127.0.0.1:{port}"}, smtp_port=port).start(wait=False)
        wait_until(lambda: b.proc.poll() is not None, timeout=30, what="backupmx to exit")
        self.assertNotEqual(b.proc.returncode, 0)
        self.assertIn("loop.test: mail for loop.test loops back to myself: "
                      f"127.0.0.1[127.0.0.1]:{port} is this server's own SMTP listener", b.log())
        self.assertNotIn("backupmx ready", b.log())

    def test_a_primary_name_that_resolves_to_us_stops_the_start(self):
        # (a wildcard listener, 0.0.0.0 taking every local address, is in the unit tests: tests
        # listen on loopback only)
        port = free_port()
        dns = DnsServer(self.dir, records=["mail.loop.test. 300 IN A 127.0.0.1"]).start()
        self.stoppers.append(dns.stop)
        b = self.backupmx({"loop.test": f"mail.loop.test:{port}"}, smtp_port=port,
                          extra_toml=f'[dns]\nresolver = "{dns.address}"').start(wait=False)
        wait_until(lambda: b.proc.poll() is not None, timeout=30, what="backupmx to exit")
        self.assertNotEqual(b.proc.returncode, 0)
        self.assertIn(f"mail.loop.test[127.0.0.1]:{port} is this server's own SMTP listener",
                      b.log())

    def test_the_same_address_on_another_port_is_no_loop(self):
        sink = self.sink().start()  # 127.0.0.1, another port: the usual test setup
        b = self.backupmx({"example.test": f"127.0.0.1:{sink.port}"}).start()
        self.assertNotIn("loops back", b.log())

    def test_domain_add_refuses_a_primary_that_is_this_server(self):
        aport = free_port()
        b = self.backupmx({"example.test": "127.0.0.1:9"},
                          extra_toml=f'[admin]\nlisten = ["127.0.0.1:{aport}"]')
        pw = add_user(b, "ann", "operator")
        b.start()
        r = b.cli("domain", "add", "loop.test", f"127.0.0.1:{b.port}", check=False)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("loops back to myself", r.stderr)
        ok = b.cli("domain", "add", "fine.test", "127.0.0.1:9", check=False)
        self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)
        c = AdminClient(aport)
        self.assertEqual(c.login("ann", pw), 303)
        status, body = c.api("POST", "/api/v1/domains",
                             {"name": "loop2.test", "primary": f"127.0.0.1:{b.port}"})
        self.assertEqual(status, 400, body)
        self.assertIn("loops back to myself", json.dumps(body))
        listed = b.cli("domain", "list").stdout
        self.assertNotIn("loop.test", listed)
        self.assertNotIn("loop2.test", listed)


class MxBackToUs(E2ETest):
    """MX 10 points at an address of ours (a DNS mistake): the route comes back here."""

    def test_an_mx_that_points_at_us_defers_the_mail_and_dns_check_says_so(self):
        port = free_port()
        dns = DnsServer(self.dir, records=[
            "loop.test. 300 IN MX 10 mail.loop.test.",
            f"loop.test. 300 IN MX 20 {ME}.",
            "mail.loop.test. 300 IN A 127.0.0.1",
            f"{ME}. 300 IN A 127.0.0.1",
        ]).start()
        self.stoppers.append(dns.stop)
        b = self.backupmx({"loop.test": None}, smtp_port=port, hostname=ME,
                          extra_toml=f'[dns]\nresolver = "{dns.address}"\n'
                                     f'[delivery]\nport = {port}',
                          extra_queue='probe_interval = "1s"\nretry_min = "1s"\n'
                                      'retry_max = "2s"').start()
        s = b.smtp()
        s.sendmail("a@sender.test", ["bob@loop.test"], "Subject: loop\r\n\r\nbody\r\n")
        s.quit()
        b.wait_log(r"deferred id=.*loops back to myself", timeout=20)
        time.sleep(3)  # several retries' worth
        self.assertEqual(len(re.findall(r"accepted id=", b.log())), 1, "re-accepted: a loop")
        self.assertNotIn("delivered id=", b.log())
        self.assertIn("loops back to myself", b.queue()[0]["last_error"])
        r = b.cli("dns-check", "loop.test", "--json", check=False)
        self.assertNotEqual(r.returncode, 0)
        checks = {c["check"]: c for c in json.loads(r.stdout)["checks"]}
        self.assertEqual(checks["no-loop"]["level"], "error", checks)
        self.assertIn("loops back to myself", checks["no-loop"]["message"])


if __name__ == "__main__":
    main()
