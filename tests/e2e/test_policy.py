"""Abuse defences: recipient validation (list, verify + cache), greylisting, rate and concurrency
limits, DNS block/allow lists from a real DNS server, SPF, HELO syntax, pre-greeting talkers.
Clients come from different 127.0.0.x source addresses to be different clients."""
import os
import signal
import smtplib
import subprocess
import sys
import time

from dnsserver import DnsServer
from harness import BIN, Backupmx, E2ETest, Raw, edit_config, main, wait_until


def rcpt_reply(r, rcpt, sender="a@sender.test"):
    r.cmd(f"MAIL FROM:<{sender}>")
    out = r.cmd(f"RCPT TO:<{rcpt}>")
    r.cmd("RSET")
    return out


class RecipientValidation(E2ETest):
    def test_list_with_catch_all_and_no_backscatter(self):
        p = self.scripted().start()
        b = self.backupmx({"example.test": {"primary": f"127.0.0.1:{p.port}", "recipients": "list"},
                           "catchall.test": f"127.0.0.1:{p.port}"},
                          extra_toml="", extra_queue="")
        # arrays are TOML, not strings: put them into the [[domain]] tables by hand
        edit_config(b, 'recipients = "list"',
                    'recipients = "list"\nrecipient_list = ["bob@example.test", "*@catchall.test"]')
        edit_config(b, 'name = "catchall.test"',
                    'name = "catchall.test"\nrecipients = "list"\nrecipient_list = ["*@catchall.test"]')
        b.start()
        r = Raw(b.port)
        r.reply()
        r.cmd("EHLO client.test")
        self.assertTrue(rcpt_reply(r, "bob@example.test").startswith("250"))
        self.assertTrue(rcpt_reply(r, "BOB@Example.test").startswith("250"))
        reply = rcpt_reply(r, "mallory@example.test")
        self.assertTrue(reply.startswith("550 5.1.1"), reply)
        self.assertIn('recipients = "list"', reply)
        self.assertTrue(rcpt_reply(r, "anyone@catchall.test").startswith("250"))
        self.assertEqual(b.queue(), [])

    def test_recipient_file_is_read_at_start_and_decides_at_rcpt(self):
        path = os.path.join(self.dir, "example.test.recipients")
        with open(path, "w") as f:
            f.write("# valid addresses of example.test\n"
                    "bob@example.test\n"
                    "\n"
                    "  carol@example.test   # the new hire\n"
                    "*@sales.example.test\n")
        p = self.scripted().start()
        b = self.backupmx({"example.test": {"primary": f"127.0.0.1:{p.port}", "recipients": "list",
                                            "recipient_file": path},
                           "sales.example.test": {"primary": f"127.0.0.1:{p.port}",
                                                  "recipients": "list", "recipient_file": path}})
        self.assertIn("ok (2 domains", b.cli("check-config").stdout)
        b.start()
        r = Raw(b.port)
        r.reply()
        r.cmd("EHLO client.test")
        self.assertTrue(rcpt_reply(r, "bob@example.test").startswith("250"))
        self.assertTrue(rcpt_reply(r, "Carol@Example.TEST").startswith("250"))
        self.assertTrue(rcpt_reply(r, "anyone@sales.example.test").startswith("250"))  # *@
        for stranger in ("mallory@example.test", "new-hire@example.test"):
            reply = rcpt_reply(r, stranger)
            self.assertTrue(reply.startswith("550 5.1.1"), (stranger, reply))
            self.assertIn('recipients = "list"', reply)
        r.cmd("QUIT")
        b.stop()
        # A file that cannot be read stops check-config (and serve), naming the key.
        os.rename(path, path + ".gone")
        for cmd in ("check-config", "serve"):
            out = b.cli(cmd, check=False)
            self.assertEqual(out.returncode, 2, (cmd, out.stdout, out.stderr))
            self.assertIn(f"domain[0].recipient_file: cannot read {path}", out.stderr)

    def test_verify_asks_the_primary_caches_and_trusts_the_cache_while_down(self):
        known = {"bob@example.test"}
        p = self.scripted(answer=lambda a: "250 2.1.5 Ok" if a in known
                          else "550 5.1.1 <%s>: Recipient address rejected: User unknown" % a)
        p.start()
        b = self.backupmx({"example.test": {"primary": f"127.0.0.1:{p.port}", "recipients": "verify"}},
                          extra_queue='probe_interval = "1s"').start()
        r = Raw(b.port)
        r.reply()
        r.cmd("EHLO client.test")
        self.assertTrue(rcpt_reply(r, "bob@example.test").startswith("250"))
        reply = rcpt_reply(r, "nobody@example.test")
        self.assertTrue(reply.startswith("550 5.1.1"), reply)
        self.assertIn("verified with the primary: 550 5.1.1", reply)
        asked = p.connections
        self.assertTrue(rcpt_reply(r, "bob@example.test").startswith("250"))  # from the cache
        self.assertTrue(rcpt_reply(r, "nobody@example.test").startswith("550 5.1.1"))
        self.assertEqual(p.connections, asked, "the cache should have answered")
        p.stop()  # the primary goes down: the cache still answers, the unknown are accepted
        s = b.smtp()
        s.sendmail("a@sender.test", ["bob@example.test"], "Subject: x\r\n\r\nx\r\n")
        b.wait_log(r"primary for example.test is down")
        self.assertTrue(rcpt_reply(r, "bob@example.test").startswith("250"))
        self.assertTrue(rcpt_reply(r, "nobody@example.test").startswith("550 5.1.1"))
        self.assertTrue(rcpt_reply(r, "newcomer@example.test").startswith("250"))
        self.assertIn("verify_unknown = accept", b.log())

    def test_verify_unknown_tempfail_while_primary_down(self):
        b = self.backupmx({"example.test": {"primary": "127.0.0.1:9", "recipients": "verify",
                                            "verify_unknown": "tempfail"}}).start()
        r = Raw(b.port)
        r.reply()
        r.cmd("EHLO client.test")
        reply = rcpt_reply(r, "someone@example.test")
        self.assertTrue(reply.startswith("450 4.1.1"), reply)
        self.assertIn("verify_unknown = tempfail", reply)


class Greylisting(E2ETest):
    def test_first_try_deferred_retry_passes_and_allowlists_the_network(self):
        p = self.scripted().start()
        b = self.backupmx({"example.test": {"primary": f"127.0.0.1:{p.port}", "greylisting": "X"}},
                          extra_toml='[policy]\ngreylist_delay = "2s"\ngreylist_expiry = "1h"')
        edit_config(b, 'greylisting = "X"', "greylisting = true")
        b.start()
        r = Raw(b.port, source="127.0.0.50")
        r.reply()
        r.cmd("EHLO client.test")
        first = rcpt_reply(r, "bob@example.test")
        self.assertTrue(first.startswith("451 4.7.1"), first)
        self.assertIn("greylisted", first)
        self.assertTrue(rcpt_reply(r, "bob@example.test").startswith("451 4.7.1"))  # too early
        b.stop()  # the triplet is in the store: it survives a restart
        b.start()
        time.sleep(2.2)
        r = Raw(b.port, source="127.0.0.50")
        r.reply()
        r.cmd("EHLO client.test")
        self.assertTrue(rcpt_reply(r, "bob@example.test").startswith("250"))
        # the client's /24 is now trusted: another triplet passes at once
        self.assertTrue(rcpt_reply(r, "carol@example.test", "z@other.test").startswith("250"))
        other_net = Raw(b.port, source="127.0.1.50")
        other_net.reply()
        other_net.cmd("EHLO client.test")
        self.assertTrue(rcpt_reply(other_net, "bob@example.test").startswith("451 4.7.1"))


# A client in a network namespace of its own: it connects from SOURCE to DEST:PORT, says
# EHLO and MAIL, and prints the reply to RCPT.
RCPT_CLIENT = r"""
import socket, sys
source, dest, port, rcpt = sys.argv[1:5]
s = socket.create_connection((dest, int(port)), timeout=10, source_address=(source, 0))
f = s.makefile("rb")
def reply():
    lines = []
    while True:
        line = f.readline().decode().rstrip("\r\n")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            return "\n".join(lines)
def cmd(c):
    s.sendall(c.encode() + b"\r\n")
    return reply()
reply()
cmd("EHLO client.test")
cmd("MAIL FROM:<a@sender.test>")
print(cmd("RCPT TO:<%s>" % rcpt))
cmd("QUIT")
"""


class NetNs:
    """A network namespace of the test's own, with IPv6 addresses on its loopback: clients
    from several /64s without any address outside this machine (nor on its shared lo)."""

    def __init__(self, name, addresses):
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
        self.run("ip", "link", "set", "lo", "up")
        for a in addresses:
            self.run("ip", "-6", "addr", "add", a + "/64", "dev", "lo", "nodad")

    def run(self, *cmd):
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], check=True,
                              capture_output=True, text=True, timeout=60)

    def rcpt(self, source, dest, port, rcpt):
        return self.run(sys.executable, "-c", RCPT_CLIENT, source, dest, str(port),
                        rcpt).stdout.strip()

    def remove(self):
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


class NsBackupmx(Backupmx):
    """backupmx started inside a NetNs (its store: SQLite, a file this machine's tests see)."""

    def __init__(self, ns, *args, **kw):
        super().__init__(*args, **kw)
        self.ns = ns

    def start(self, wait=True):
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns.name, BIN, "serve",
                                      "--config", self.config], stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=self.env)
        wait_until(lambda: self.proc.poll() is not None or "backupmx ready" in self.log(),
                   what="backupmx to start")
        assert self.proc.poll() is None, "backupmx exited at start:\n" + self.log()
        return self


class GreylistingIpv6(E2ETest):
    def test_ipv6_clients_are_greylisted_by_their_64(self):
        if os.geteuid() != 0:
            self.skipTest("ip netns needs root")
        server, a1, a2 = "2001:db8:1:1::1", "2001:db8:1:1::a1", "2001:db8:1:1::a2"
        other = "2001:db8:1:2::b1"  # the same /48, another /64
        ns = NetNs(f"bmx-grey-{os.getpid()}", [server, a1, a2, other])
        self.stoppers.append(ns.remove)
        b = NsBackupmx(ns, self.dir, {"example.test": {"primary": "127.0.0.1:9",
                                                       "greylisting": "X"}},
                       smtp_port=2525, host=f"[{server}]", store=f"sqlite:{self.dir}/queue.db",
                       extra_toml='[policy]\ngreylist_delay = "2s"\ngreylist_expiry = "1h"')
        self.stoppers.append(lambda: b.stop(signal.SIGKILL) if b.proc and b.proc.poll() is None
                             else None)
        edit_config(b, 'greylisting = "X"', "greylisting = true")
        b.start()
        first = ns.rcpt(a1, server, 2525, "bob@example.test")
        self.assertTrue(first.startswith("451 4.7.1"), first)
        time.sleep(2.5)  # past greylist_delay
        # a2 is another address of a1's /64: the retry of the same triplet, so it passes
        again = ns.rcpt(a2, server, 2525, "bob@example.test")
        self.assertTrue(again.startswith("250"), again)
        # another /64 (of the same /48) is another client: first seen, greylisted
        elsewhere = ns.rcpt(other, server, 2525, "bob@example.test")
        self.assertTrue(elsewhere.startswith("451 4.7.1"), elsewhere)
        b.stop()


class Limits(E2ETest):
    def start(self, **limits):
        p = self.scripted().start()
        pol = "\n".join(f"{k} = {v}" for k, v in limits.items())
        return self.backupmx({"example.test": f"127.0.0.1:{p.port}"},
                             extra_toml=f"[policy]\nlimit_exceptions = []\n{pol}").start()

    def test_concurrency_per_client_and_per_subnet(self):
        b = self.start(client_connections=2, subnet_connections=3)
        a1, a2 = Raw(b.port, source="127.0.0.60"), Raw(b.port, source="127.0.0.60")
        self.assertTrue(a1.reply().startswith("220") and a2.reply().startswith("220"))
        a3 = Raw(b.port, source="127.0.0.60")
        reply = a3.reply()
        self.assertTrue(reply.startswith("421 4.7.0"), reply)
        self.assertIn("client_connections", reply)
        c1 = Raw(b.port, source="127.0.0.61")
        self.assertTrue(c1.reply().startswith("220"))
        c2 = Raw(b.port, source="127.0.0.62")  # the /24 holds 3 already
        self.assertIn("subnet_connections", c2.reply())
        a1.cmd("QUIT")
        a1.close()
        time.sleep(0.3)
        a4 = Raw(b.port, source="127.0.0.60")  # a slot came back
        self.assertTrue(a4.reply().startswith("220"))
        other = Raw(b.port, source="127.0.1.60")  # another network is not affected
        self.assertTrue(other.reply().startswith("220"))

    def test_connection_message_and_recipient_rates(self):
        b = self.start(connection_rate=3, message_rate=2, recipient_rate=3)
        for i in range(3):
            r = Raw(b.port, source="127.0.0.70")
            self.assertTrue(r.reply().startswith("220"))
            r.close()
        reply = Raw(b.port, source="127.0.0.70").reply()
        self.assertTrue(reply.startswith("421 4.7.0") and "connection_rate" in reply, reply)
        r = Raw(b.port, source="127.0.0.71")
        r.reply()
        r.cmd("EHLO client.test")
        self.assertTrue(r.cmd("MAIL FROM:<a@sender.test>").startswith("250"))
        self.assertTrue(all(r.cmd(f"RCPT TO:<u{i}@example.test>").startswith("250") for i in range(3)))
        reply = r.cmd("RCPT TO:<u3@example.test>")
        self.assertTrue(reply.startswith("450 4.7.1") and "recipient_rate" in reply, reply)
        r.cmd("RSET")
        self.assertTrue(r.cmd("MAIL FROM:<a@sender.test>").startswith("250"))
        r.cmd("RSET")
        reply = r.cmd("MAIL FROM:<a@sender.test>")
        self.assertTrue(reply.startswith("450 4.7.1") and "message_rate" in reply, reply)

    def test_loopback_is_exempt_by_default(self):
        p = self.scripted().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"},
                          extra_toml="[policy]\nconnection_rate = 1").start()
        for _ in range(5):
            self.assertTrue(Raw(b.port).reply().startswith("220"))


class DnsLists(E2ETest):
    def test_weighted_block_and_allow_lists(self):
        dns = DnsServer(self.dir, records=[
            "80.0.0.127.bl.test. 300 IN A 127.0.0.2",    # 127.0.0.80: on both block lists
            "80.0.0.127.bl2.test. 300 IN A 127.0.0.2",
            "81.0.0.127.bl.test. 300 IN A 127.0.0.2",    # 127.0.0.81: on one, below threshold
            "82.0.0.127.wl.test. 300 IN A 127.0.0.2",    # 127.0.0.82: allowlisted
            "83.0.0.127.bl2.test. 300 IN A 127.0.0.9",   # wrong code for bl2's "=127.0.0.2"
        ], zones=["bl.test.", "bl2.test.", "wl.test."]).start()
        self.stoppers.append(dns.stop)
        p = self.scripted().start()
        b = self.backupmx({"example.test": {"primary": f"127.0.0.1:{p.port}", "greylisting": "X"}},
                          extra_toml=f'[dns]\nresolver = "{dns.address}"\n[policy]\n'
                                     f'dnsbl = ["bl.test*2", "bl2.test=127.0.0.2", "wl.test*-5"]\n'
                                     f'dnsbl_threshold = 3\ndnswl_threshold = -5')
        edit_config(b, 'greylisting = "X"', "greylisting = true")
        b.start()

        def rcpt_from(src):
            r = Raw(b.port, source=src)
            r.reply()
            r.cmd("EHLO client.test")
            return rcpt_reply(r, "bob@example.test")

        reply = rcpt_from("127.0.0.80")
        self.assertTrue(reply.startswith("554 5.7.1"), reply)
        self.assertIn("bl.test(2) bl2.test(1)", reply)
        self.assertTrue(rcpt_from("127.0.0.81").startswith("451 4.7.1"))   # not blocked: greylisted
        self.assertTrue(rcpt_from("127.0.0.83").startswith("451 4.7.1"))   # code did not match
        self.assertTrue(rcpt_from("127.0.0.82").startswith("250"))         # allowlisted: no greylisting
        queried = {n for n, t in dns.queries()}
        self.assertTrue({"80.0.0.127.bl.test.", "80.0.0.127.bl2.test.", "80.0.0.127.wl.test."} <= queried,
                        queried)


class Hygiene(E2ETest):
    def test_pre_greeting_talker_refused(self):
        p = self.scripted().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"},
                          extra_toml='[policy]\ngreet_pause = "1s"').start()
        r = Raw(b.port)
        r.send(b"EHLO spammer.test\r\n")  # before the banner
        reply = r.reply()
        self.assertTrue(reply.startswith("554 5.5.1"), reply)
        self.assertIn("greet_pause", reply)
        polite = Raw(b.port)
        t0 = time.monotonic()
        self.assertTrue(polite.reply().startswith("220"))
        self.assertGreaterEqual(time.monotonic() - t0, 0.9)

    def test_helo_syntax(self):
        p = self.scripted().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"}).start()
        r = Raw(b.port)
        r.reply()
        for bad in ("bad..name", "192.0.2.1", "no_such!host", "[999.1.1.1]", "-lead.test"):
            reply = r.cmd(f"HELO {bad}")
            self.assertTrue(reply.startswith("501 5.5.2"), (bad, reply))
        for good in ("mail.example.test", "localhost", "[192.0.2.1]", "[IPv6:2001:db8::1]"):
            self.assertTrue(r.cmd(f"EHLO {good}").startswith("250"), good)

    def test_slow_drip_cannot_hold_a_session(self):
        p = self.scripted().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"},
                          extra_smtp='command_timeout = "2s"').start()
        r = Raw(b.port)
        r.reply()
        t0 = time.monotonic()
        reply = ""
        for ch in b"NOOP and more and more and more\r\n":
            try:
                r.send(bytes([ch]))
            except OSError:
                break
            time.sleep(0.25)  # one byte every 250 ms: each read is quick, the line never ends
            if time.monotonic() - t0 > 6:
                break
        reply = r.reply()
        self.assertTrue(reply.startswith("421 4.4.2"), reply)
        self.assertLess(time.monotonic() - t0, 8)

    def test_slow_drip_data_is_cut_off(self):
        p = self.scripted().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"},
                          extra_smtp='data_timeout = "2s"\nmin_data_rate = 1000').start()
        r = Raw(b.port)
        r.reply()
        r.cmd("EHLO client.test")
        r.cmd("MAIL FROM:<a@sender.test>")
        r.cmd("RCPT TO:<bob@example.test>")
        self.assertTrue(r.cmd("DATA").startswith("354"))
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < 8:
                r.send(b"x")  # one byte every 200 ms: each read is quick, the rate is 5 B/s
                time.sleep(0.2)
        except OSError:
            pass
        reply = r.reply()
        self.assertTrue(reply.startswith("421 4.4.2"), reply)
        self.assertLess(time.monotonic() - t0, 6)
        self.assertEqual(b.queue(), [])

    def test_a_fast_big_message_is_not_cut_off(self):
        p = self.scripted().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"},
                          extra_smtp='data_timeout = "1s"\nmin_data_rate = 100000').start()
        r = Raw(b.port)
        r.reply()
        r.cmd("EHLO client.test")
        r.cmd("MAIL FROM:<a@sender.test>")
        r.cmd("RCPT TO:<bob@example.test>")
        r.cmd("DATA")
        line = b"y" * 998 + b"\r\n"
        for _ in range(30):  # 3 MB in about 3 s: longer than data_timeout, faster than the rate
            r.send(line * 100)
            time.sleep(0.1)
        r.send(b".\r\n")
        self.assertTrue(r.reply().startswith("250"))

    def test_junk_command_limit(self):
        p = self.scripted().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"},
                          extra_smtp="max_junk_commands = 5").start()
        r = Raw(b.port)
        r.reply()
        for _ in range(5):
            self.assertTrue(r.cmd("NOOP").startswith("250"))
        reply = r.cmd("NOOP")
        self.assertTrue(reply.startswith("421 4.7.0") and "max_junk_commands" in reply, reply)


class Spf(E2ETest):
    def test_fail_refused_softfail_recorded(self):
        dns = DnsServer(self.dir, records=[
            'strict.test. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"',
            'soft.test. 300 IN TXT "v=spf1 ip4:192.0.2.1 ~all"',
            'ok.test. 300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"',
            'forged-helo.test. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"',
        ]).start()
        self.stoppers.append(dns.stop)
        p = self.scripted().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"},
                          extra_toml=f'[dns]\nresolver = "{dns.address}"').start()
        r = Raw(b.port)
        r.reply()
        r.cmd("EHLO client.test")
        reply = r.cmd("MAIL FROM:<x@strict.test>")
        self.assertTrue(reply.startswith("550 5.7.23"), reply)
        self.assertIn("SPF fail", reply)
        h = Raw(b.port)  # the HELO identity is checked first (RFC 7208 2.3)
        h.reply()
        h.cmd("EHLO forged-helo.test")
        reply = h.cmd("MAIL FROM:<x@ok.test>")
        self.assertTrue(reply.startswith("550 5.7.23 <forged-helo.test>: Helo command rejected"),
                        reply)
        s = b.smtp()
        s.sendmail("x@soft.test", ["bob@example.test"], "Subject: soft\r\n\r\nx\r\n")
        s.sendmail("x@ok.test", ["bob@example.test"], "Subject: ok\r\n\r\nx\r\n")
        s.quit()
        wait_until(lambda: len(p.transactions) == 2, what="two deliveries")
        soft = [t for t in p.transactions if b"Subject: soft" in t["data"]][0]["data"].decode()
        ok = [t for t in p.transactions if b"Subject: ok" in t["data"]][0]["data"].decode()
        self.assertTrue(soft.startswith("Received-SPF: softfail"), soft[:200])
        self.assertIn("client-ip=127.0.0.1", soft)
        self.assertIn("envelope-from=", soft)
        self.assertTrue(ok.startswith("Received-SPF: pass"), ok[:200])
        self.assertLess(ok.index("Received-SPF:"), ok.index("Received: from"))


if __name__ == "__main__":
    main()
