"""Backscatter (issue 14 point 5). With recipients = "any", and with "verify" while the primary
is down, an unknown recipient got 250 and later a bounce to the (forged) sender, carrying up to
64 KiB of attacker-chosen headers. Now a domain added at run time asks the primary about each
recipient and, while it cannot answer, tells the sender to try later (verify_unknown =
"tempfail"); a config that uses "any" is warned about at start and by check-config (the panel's
warning is in test_panel); and a DSN returns at most `[queue] dsn_max_headers` of the original
header, whole fields only."""
import re
import smtplib

from harness import E2ETest, free_port, main, wait_until

FAST = 'probe_interval = "1s"\nretry_min = "1s"\nretry_max = "2s"'


def dsns(sink):
    return [m for m in sink.messages() if b"multipart/report" in m["content"]]


class RuntimeDomains(E2ETest):
    def test_a_domain_added_at_run_time_tempfails_unknown_recipients_while_its_primary_is_down(self):
        down = free_port()  # nothing listens: the primary is down
        b = self.backupmx({"example.test": "127.0.0.1:9"}).start()
        r = b.cli("domain", "add", "new.test", f"127.0.0.1:{down}")
        self.assertEqual(r.returncode, 0, r.stderr)
        s = b.smtp()
        s.mail("forged@victim.test")
        wait_until(lambda: s.rcpt("anyone@new.test")[0] != 550, timeout=10,
                   what="the server to serve new.test")
        code, msg = s.rcpt("nobody-knows@new.test")
        self.assertEqual(code // 100, 4, msg)  # not 250: no bounce to forged@victim.test later
        self.assertIn(b"verify_unknown = tempfail", msg)
        s.quit()

    def test_a_domain_added_at_run_time_with_recipients_any_says_250_and_is_warned_about(self):
        down = free_port()
        b = self.backupmx({"example.test": "127.0.0.1:9"}).start()
        r = b.cli("domain", "add", "open.test", f"127.0.0.1:{down}", "--recipients", "any")
        self.assertIn("invites backscatter", r.stderr)
        s = b.smtp()
        s.mail("a@sender.test")
        wait_until(lambda: s.rcpt("anyone@open.test")[0] == 250, timeout=10,
                   what="any address taken, as asked")
        s.quit()


class ConfigWarning(E2ETest):
    def test_recipients_any_in_the_config_is_warned_about_at_start_and_by_check_config(self):
        b = self.backupmx({"open.test": {"primary": "127.0.0.1:9", "recipients": "any"},
                           "safe.test": {"primary": "127.0.0.1:9", "recipients": "verify"}})
        out = b.cli("check-config").stdout
        self.assertRegex(out, r'warning: domain open\.test: recipients = "any" accepts every '
                              r"address .*backscatter")
        self.assertNotIn("safe.test", out)
        b.start()
        self.assertRegex(b.log(), r'warning domain open\.test: recipients = "any"')
        self.assertNotIn("domain safe.test", b.log())


class DsnHeaders(E2ETest):
    def bounce_with_big_header(self, extra_queue=""):
        relay = self.sink().start()
        p = self.scripted(answer=lambda r: "550 5.1.1 <%s>: no such user" % r).start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"},
                          extra_queue=FAST + f'\nrelayhost = "127.0.0.1:{relay.port}"\n'
                                      + extra_queue).start()
        junk = "".join(f"X-Junk-{i:04d}: " + "j" * 60 + "\r\n" for i in range(1000))  # 76 KB
        s = b.smtp()
        s.sendmail("alice@sender.test", ["gone@example.test"],
                   junk + "Subject: big header\r\n\r\nbody\r\n")
        s.quit()
        dsn = wait_until(lambda: dsns(relay), timeout=30, what="the DSN")[0]["content"].decode()
        returned = dsn.split("text/rfc822-headers", 1)[1]
        return dsn, len(re.findall(r"^X-Junk-\d{4}: ", returned, re.M)), returned

    def test_a_dsn_returns_at_most_8_kib_of_the_original_header_by_default(self):
        dsn, fields, returned = self.bounce_with_big_header()
        print(f"\n  76 KB of header bounced: the DSN is {len(dsn)} bytes, {fields} fields returned")
        self.assertLess(len(dsn), 8192 + 4096)
        self.assertGreater(fields, 50)
        self.assertLess(fields, 8192 // 76 + 1)
        self.assertIn("Final-Recipient: rfc822; gone@example.test", dsn)

    def test_dsn_max_headers_sets_the_limit(self):
        dsn, fields, _ = self.bounce_with_big_header("dsn_max_headers = 1024")
        self.assertLessEqual(fields, 1024 // 76)
        self.assertGreater(fields, 5)


if __name__ == "__main__":
    main()
