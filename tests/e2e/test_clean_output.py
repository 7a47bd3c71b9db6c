"""What is stored and written is clean (issue 14, points 12 and 14).

Log injection: a CRLF in an unauthenticated login's user name, a line break in a token label, a
bare CR or an ANSI escape in HELO, an unknown command full of control bytes — none writes a raw
control byte or a forged line into the log, in the text format and in the JSON one (where every
line is one JSON object). Invalid UTF-8 under SMTPUTF8 gets 553 5.6.7 and is never stored; and
whatever bytes a store holds (a row written before this check, say), `queue list --json` and
`GET /api/v1/queue` stay valid JSON."""
import http.client
import json
import re
import sqlite3
import subprocess
import urllib.parse

from harness import BIN, AdminClient, E2ETest, Raw, add_user, free_port, main, wait_until

FORGED = "2026-12-02 12:00:00.000 info delivered id=FORGED"


def attack_everything(test, b, admin_port):
    """Sends each injection attempt once; returns what a forged line would contain."""
    r = Raw(b.port)
    r.reply()
    r.cmd(b"EHLO evil\r" + FORGED.encode() + b"\x1b[2J")  # bare CR, ANSI clear-screen
    r.cmd(b"HELO x\x1b]0;owned\x07")
    r.cmd(b"XYZZY \x1b[31m\r" + FORGED.encode())
    r.cmd("QUIT")
    r.close()
    c = AdminClient(admin_port)
    status, _, page, _ = c.request("GET", "/login")
    csrf = re.search(r'name="csrf" value="([^"]*)"', page).group(1)
    form = urllib.parse.urlencode({"user": "mallory\r\n" + FORGED + "\x1b[0m",
                                   "password": "wrong", "csrf": csrf})
    status, _, _, _ = c.request("POST", "/login", form,
                                {"Content-Type": "application/x-www-form-urlencoded"})
    test.assertNotEqual(status, 303)
    op = AdminClient(admin_port)
    test.assertEqual(op.login("ann", test.ann_pw), 303)
    status, t = op.api("POST", "/api/v1/tokens", {"label": "mon\n" + FORGED + "\r\x1b[1m"})
    test.assertEqual(status, 201, t)
    wait_until(lambda: "token" in b.log(), timeout=5, what="the token's log line")


class LogInjection(E2ETest):
    def start(self, log_format):
        self.aport = free_port()
        b = self.backupmx({"example.test": "127.0.0.1:9"},
                          extra_toml=f'[admin]\nlisten = ["127.0.0.1:{self.aport}"]\n'
                                     f'[log]\nformat = "{log_format}"')
        self.ann_pw = add_user(b, "ann", "operator")
        return b.start()

    def raw_log(self, b):
        with open(b.log_path, "rb") as f:
            return f.read()

    def test_text_log_has_no_raw_control_byte_and_no_forged_line(self):
        b = self.start("text")
        attack_everything(self, b, self.aport)
        log = self.raw_log(b)
        for c in (b"\r", b"\x1b", b"\x07"):
            self.assertNotIn(c, log, f"raw {c!r} in the log")
        lines = log.decode("utf-8").split("\n")
        self.assertFalse([x for x in lines if x.startswith(FORGED)], "a forged line")
        for line in filter(None, lines):  # every line is one of ours: time, level, message
            self.assertRegex(line, r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} "
                                   r"(trace|debug|info|warning|error|critical) ")
        self.assertIn("mallory\\x0D\\x0A" + FORGED, log.decode())  # there, and escaped
        print(f"\n  {len(lines)} log lines, every one well-formed; the attacks came out escaped")

    def test_json_log_is_one_valid_object_per_line_with_the_attacks_escaped(self):
        b = self.start("json")
        attack_everything(self, b, self.aport)
        log = self.raw_log(b)
        for c in (b"\r", b"\x1b", b"\x07"):
            self.assertNotIn(c, log, f"raw {c!r} in the log")
        events = []
        for line in filter(None, log.decode("utf-8").split("\n")):
            event = json.loads(line)  # each line alone is a whole object
            self.assertEqual(sorted(event), ["level", "message", "time"], line)
            self.assertRegex(event["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            self.assertNotIn("\n", event["message"])
            self.assertNotIn("\x1b", event["message"])
            events.append(event)
        self.assertTrue(any("backupmx ready" in e["message"] for e in events))
        self.assertTrue(any("mallory\\x0D\\x0A" + FORGED in e["message"] for e in events))
        self.assertTrue(any("mon\\x0A" + FORGED in e["message"] for e in events), events[-5:])
        print(f"\n  {len(events)} JSON log events, every one parsed")

    def test_log_format_other_than_text_or_json_is_a_config_error(self):
        b = self.backupmx({"example.test": "127.0.0.1:9"}, extra_toml='[log]\nformat = "xml"')
        r = b.cli("check-config", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("log.format", r.stdout + r.stderr)


class Utf8(E2ETest):
    def test_invalid_utf8_addresses_get_553_5_6_7_and_valid_ones_250(self):
        b = self.backupmx({"example.test": "127.0.0.1:9"},
                          extra_queue='retry_min = "1h"\nretry_max = "2h"').start()
        r = Raw(b.port)
        r.reply()
        r.cmd("EHLO client.test.example")
        bad = {b"\xff\xfe\x80": "bytes that start no sequence",
               b"\xc0\xaf": "an overlong '/'",
               b"\xed\xa0\x80": "a UTF-16 surrogate",
               b"\xf4\x90\x80\x80": "beyond U+10FFFF",
               b"caf\xc3": "a sequence cut short"}
        for local, what in bad.items():
            reply = r.cmd(b"MAIL FROM:<" + local + b"@sender.test> SMTPUTF8")
            self.assertTrue(reply.startswith("553 5.6.7"), (what, reply))
        self.assertTrue(r.cmd("MAIL FROM:<j\u00f6rg@sender.test> SMTPUTF8".encode())
                        .startswith("250"))
        for local, what in bad.items():
            reply = r.cmd(b"RCPT TO:<" + local + b"@example.test>")
            self.assertTrue(reply.startswith("553 5.6.7"), (what, reply))
        self.assertTrue(r.cmd("RCPT TO:<m\u00fcller@example.test>".encode()).startswith("250"))
        r.cmd("QUIT")
        r.close()

    def test_queue_json_stays_valid_whatever_bytes_the_store_holds(self):
        aport = free_port()
        b = self.backupmx({"example.test": "127.0.0.1:9"}, store=f"sqlite:{self.dir}/queue.db",
                          extra_toml=f'[admin]\nlisten = ["127.0.0.1:{aport}"]',
                          extra_queue='retry_min = "1h"\nretry_max = "2h"')
        pw = add_user(b, "ann", "operator")
        b.start()
        s = b.smtp()
        s.sendmail("a@sender.test", ["bob@example.test"], "Subject: x\r\n\r\nx\r\n")
        s.quit()
        wait_until(lambda: b.queue() and b.queue()[0]["last_error"], timeout=20,
                   what="a first attempt")
        # What an older version, or a store edited by hand, may hold: not UTF-8 at all.
        db = sqlite3.connect(f"{self.dir}/queue.db", timeout=10)
        db.execute("UPDATE messages SET sender = CAST(X'FFFE80' || '@sender.test' AS BLOB)")
        db.commit()
        db.close()
        out = subprocess.run([BIN, "queue", "list", "--json", "--config", b.config],
                             capture_output=True, timeout=60, check=True).stdout
        listed = json.loads(out.decode("utf-8"))  # strict: invalid UTF-8 raises here
        self.assertEqual(listed[0]["sender"], "\ufffd\ufffd\ufffd@sender.test")
        c = AdminClient(aport)
        self.assertEqual(c.login("ann", pw), 303)
        conn = http.client.HTTPConnection("127.0.0.1", aport, timeout=30)
        conn.request("GET", "/api/v1/queue", headers={
            "Cookie": "; ".join(f"{k}={v}" for k, v in c.cookies.items())})
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        self.assertEqual(resp.status, 200, raw[:300])
        api = json.loads(raw.decode("utf-8"))  # the bytes as sent, strictly
        self.assertIn("\ufffd\ufffd\ufffd@sender.test", json.dumps(api, ensure_ascii=False))


if __name__ == "__main__":
    main()
