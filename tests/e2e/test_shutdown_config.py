"""Clean stop on SIGTERM/SIGINT without losing mail, and config errors that name the key."""
import os
import signal
import subprocess
import time

from harness import BIN, E2ETest, Raw, main, store_dump, wait_until


class Shutdown(E2ETest):
    def test_sigterm_mid_session_and_mid_delivery_loses_nothing(self):
        primary = self.scripted(data_delay=3.0)  # slow primary: a delivery is in flight
        b = self.backupmx({"example.test": f"127.0.0.1:{primary.port}"},
                          extra_queue='probe_interval = "1s"').start()
        primary.start()
        s = b.smtp()
        s.sendmail("a@sender.test", ["in-flight@example.test"], b"Subject: 1\r\n\r\nfirst\r\n")
        s.quit()
        wait_until(lambda: primary.active > 0, what="delivery in flight")
        idle = Raw(b.port)
        idle.reply()
        half = Raw(b.port)
        half.reply()
        half.cmd("EHLO half.test")
        half.cmd("MAIL FROM:<a@sender.test>")
        half.cmd("RCPT TO:<half@example.test>")
        half.cmd("DATA")
        half.send(b"Subject: never finished\r\n\r\npartial")
        t0 = time.monotonic()
        self.assertEqual(b.stop(signal.SIGTERM), 0)
        self.assertLess(time.monotonic() - t0, 25)
        self.assertIn("stopping", b.log())
        self.assertIn("backupmx stopped", b.log())
        self.assertNotIn("250", idle.reply() + half.reply())  # no 250 for the half message
        q = b.queue()
        self.assertEqual([r["recipients"] for r in q], [["in-flight@example.test"]])
        # The half message is nowhere: not in the store, not in a spool file beside it.
        self.assertNotIn("never finished", store_dump(b))
        self.assertNotIn("half@example.test", store_dump(b))
        for root, _, files in os.walk(self.dir):
            for name in files:
                if not name.endswith(".log"):
                    with open(os.path.join(root, name), "rb") as f:
                        self.assertNotIn(b"never finished", f.read(), name)
        b.start()  # after the restart the message goes out (a duplicate is allowed: in flight)
        wait_until(lambda: b.queue() == [], timeout=30, what="delivered after restart")
        self.assertTrue(any(t["rcpts"] == ["in-flight@example.test"] for t in primary.transactions))
        self.assertFalse(any(b"never finished" in t["data"] for t in primary.transactions))

    def test_sigterm_answers_421_to_every_client_in_session(self):
        # RFC 5321 3.8: a server that must shut down answers 421 (and closes) rather than
        # dropping the connection; the client then retries later instead of seeing an error.
        b = self.backupmx({"example.test": "127.0.0.1:9"}).start()
        idle = Raw(b.port)  # between commands
        idle.reply()
        idle.cmd("EHLO idle.test")
        half = Raw(b.port)  # inside DATA
        half.reply()
        half.cmd("EHLO half.test")
        half.cmd("MAIL FROM:<a@sender.test>")
        half.cmd("RCPT TO:<half@example.test>")
        self.assertTrue(half.cmd("DATA").startswith("354"))
        half.send(b"Subject: never finished\r\n\r\npartial")
        self.assertEqual(b.stop(signal.SIGTERM), 0)
        for who, r in (("idle", idle), ("inside DATA", half)):
            reply = r.reply()
            self.assertTrue(reply.startswith("421 4.3.2"), (who, reply))
            self.assertEqual(r.reply(), "", who)  # and then closed
        self.assertEqual(b.queue(), [])

    def test_sigint_stops_idle_server(self):
        b = self.backupmx({"example.test": "127.0.0.1:9"}).start()
        self.assertEqual(b.stop(signal.SIGINT), 0)
        with self.assertRaises(OSError):
            Raw(b.port, timeout=2)


class ConfigErrors(E2ETest):
    def check(self, toml, *expected, code=2):
        path = f"{self.dir}/bad.toml"
        with open(path, "w") as f:
            f.write(toml)
        for cmd in (["check-config"], ["serve"]):
            r = subprocess.run([BIN, *cmd, "--config", path], capture_output=True, text=True,
                               timeout=30)
            self.assertEqual(r.returncode, code, (cmd, r.stdout, r.stderr))
            for e in expected:
                self.assertIn(e, r.stderr)

    def test_good_config_passes(self):
        b = self.backupmx({"example.test": "127.0.0.1:2526"})
        out = b.cli("check-config").stdout
        self.assertIn("ok (1 domains", out)

    def test_unknown_keys_are_named(self):
        self.check('hostname = "a.test"\nbogus = 1\n', "bogus: unknown key")
        self.check('[smtp]\nlisten = ["127.0.0.1:2525"]\nmax_size = 5\n', "smtp.max_size: unknown key")
        self.check('[queue]\nretry_mn = "1m"\n', "queue.retry_mn: unknown key")
        self.check('[[domain]]\nname = "a.test"\nprimary = "127.0.0.1:25"\nprimry = "x"\n',
                   "domain[0].primry: unknown key")

    def test_bad_values_are_named(self):
        self.check('[queue]\nmax_age = "14 days"\n', "queue.max_age", "duration")
        self.check('[queue]\nretry_min = "10m"\nretry_max = "1m"\n', "queue.retry_max")
        self.check('[smtp]\nmax_recipients = 0\n', "smtp.max_recipients")
        self.check('[smtp]\nlisten = ["nonsense:port"]\n', "smtp.listen")
        self.check('[[domain]]\nname = "a.test"\ntls = "dane"\n', "domain[0].tls", "trust_anchor")
        self.check('[[domain]]\nname = "bad domain"\nprimary = "x:25"\n', "domain[0].name")
        self.check('[[domain]]\nname = "a.test"\nprimary = "host:99999"\n', "domain[0].primary")
        self.check('hostname = "a.test"\n[smtp\n', "TOML syntax error at line 2")

    def test_missing_file(self):
        self.check_missing = subprocess.run([BIN, "check-config", "--config", "/nonexistent.toml"],
                                            capture_output=True, text=True, timeout=30)
        self.assertEqual(self.check_missing.returncode, 2)
        self.assertIn("cannot read", self.check_missing.stderr)


if __name__ == "__main__":
    main()
