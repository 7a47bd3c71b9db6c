"""Milters through the whole server: backupmx in front of a real milter (pymilter, the real
libmilter, scripted per test; opendkim is exercised in tests/net/milter_real_test.cpp). The
primary's content rules run here: reject, tempfail, discard, header edits, quarantine."""
import hashlib
import json
import os
import subprocess
import time

from harness import E2ETest, Raw, main, vm_hwm_mb, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
MILTER = os.path.join(HERE, "..", "milter", "scripted_milter.py")


class Milters(E2ETest):
    def start(self, domains_milter=True, **env):
        sock = os.path.join(self.dir, "milter.sock")
        ready = os.path.join(self.dir, "milter.ready")
        log = os.path.join(self.dir, "milter.jsonl")
        e = dict(os.environ, MILTER_SOCKET=f"unix:{sock}", MILTER_READY=ready, MILTER_LOG=log,
                 MILTER_STDIN_EOF="1", **{f"MILTER_{k.upper()}": v for k, v in env.items()})
        self.milter = subprocess.Popen(["/usr/bin/python3", MILTER], env=e, stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        def stop():
            self.milter.stdin.close()
            try:
                self.milter.wait(10)
            except subprocess.TimeoutExpired:
                self.milter.kill()
                self.milter.wait()
        self.stoppers.append(stop)
        wait_until(lambda: os.path.exists(ready), what="milter ready")
        self.milter_log = log
        self.primary = self.scripted().start()
        spec = {"primary": f"127.0.0.1:{self.primary.port}", "tls": "may"}
        self.b = self.backupmx({"example.test": spec}, extra_queue='probe_interval = "1s"')
        with open(self.b.config) as f:
            text = f.read()
        with open(self.b.config, "w") as f:
            f.write(text.replace('tls = "may"', f'tls = "may"\nmilters = ["unix:{sock}"]'))
        self.b.start()
        return self.b

    def send(self, subject="hello", rcpts=("bob@example.test",)):
        r = Raw(self.b.port)
        r.reply()
        r.cmd("EHLO client.test")
        replies = [r.cmd("MAIL FROM:<alice@sender.test>")]
        replies += [r.cmd(f"RCPT TO:<{x}>") for x in rcpts]
        d = r.cmd("DATA")
        replies.append(d)
        if d.startswith("354"):
            r.send(f"Subject: {subject}\r\nX-Spam-Flag: NO\r\n\r\nbody text\r\n.\r\n")
            replies.append(r.reply())
        r.cmd("QUIT")
        return replies

    def seen(self):
        with open(self.milter_log) as f:
            return [json.loads(l) for l in f if l.strip()]

    def test_continue_the_milter_sees_every_step(self):
        self.start()
        replies = self.send()
        self.assertTrue(replies[-1].startswith("250"), replies)
        wait_until(lambda: self.primary.transactions, what="delivery")
        events = self.seen()
        steps = [e["cb"] for e in events]
        for step in ("connect", "helo", "mail", "rcpt", "data", "header", "eoh", "eom"):
            self.assertIn(step, steps, steps)
        # The body step: the milter logs no line per body chunk, but at eom it tells what its
        # body callbacks got (length, chunks, SHA-256): every byte of the body, as sent.
        body = b"body text\r\n"
        by = {e["cb"]: e for e in events}
        self.assertEqual(by["eom"]["args"], [len(body), 1, hashlib.sha256(body).hexdigest()])
        self.assertEqual(by["helo"]["args"][0], "client.test")
        self.assertIn("alice@sender.test", by["mail"]["args"][0])
        self.assertIn("bob@example.test", by["rcpt"]["args"][0])
        headers = [e["args"][0] for e in events if e["cb"] == "header"]
        self.assertEqual(headers, ["Subject", "X-Spam-Flag"])  # our Received: is not shown

    def test_reject_at_eom(self):
        self.start(stage="eom", action="reply", reply="550 5.7.1 Rejected by the primary's rules")
        replies = self.send()
        self.assertEqual(replies[-1], "550 5.7.1 Rejected by the primary's rules")
        time.sleep(0.5)
        self.assertEqual(self.b.queue(), [])
        self.assertEqual(self.primary.transactions, [])

    def test_tempfail_one_recipient(self):
        self.start(stage="rcpt", action="tempfail", match="carol")
        replies = self.send(rcpts=("bob@example.test", "carol@example.test"))
        self.assertTrue(replies[1].startswith("250"))
        self.assertTrue(replies[2].startswith("4"), replies[2])
        self.assertTrue(replies[-1].startswith("250"))
        wait_until(lambda: self.primary.transactions, what="delivery")
        self.assertEqual(self.primary.transactions[0]["rcpts"], ["bob@example.test"])

    def test_discard(self):
        self.start(stage="eom", action="discard")
        replies = self.send()
        self.assertTrue(replies[-1].startswith("250"), replies)
        time.sleep(0.5)
        self.assertEqual(self.b.queue(), [])
        self.assertEqual(self.primary.transactions, [])
        self.assertIn("discarded id=", self.b.log())

    def test_header_edits_reach_the_primary(self):
        edits = [["add", "X-Spam-Score", "7.5"], ["change", "X-Spam-Flag", 1, "YES"],
                 ["insert", 0, "X-Milter-First", "top"]]
        self.start(stage="eom", edits=json.dumps(edits))
        self.assertTrue(self.send()[-1].startswith("250"))
        wait_until(lambda: self.primary.transactions, what="delivery")
        data = self.primary.transactions[0]["data"].decode()
        self.assertIn("X-Spam-Score: 7.5\r\n", data)
        self.assertIn("X-Spam-Flag: YES\r\n", data)
        self.assertNotIn("X-Spam-Flag: NO", data)
        self.assertIn("X-Milter-First: top\r\n", data)

    def test_envelope_edits_reach_the_primary_but_never_relay_elsewhere(self):
        edits = [["delrcpt", "<bob@example.test>"], ["addrcpt", "<carol@example.test>"],
                 ["addrcpt", "<eve@elsewhere.test>"], ["chgfrom", "<bounces@sender.test>"]]
        self.start(stage="eom", edits=json.dumps(edits))
        r = self.send(rcpts=("bob@example.test", "dave@example.test"))
        self.assertTrue(r[-1].startswith("250"), r)
        wait_until(lambda: self.primary.transactions, what="delivery")
        t = self.primary.transactions[0]
        self.assertEqual(sorted(t["rcpts"]), ["carol@example.test", "dave@example.test"])
        self.assertIn("<bounces@sender.test>", t["mail"])
        self.b.wait_log(r"recipient <eve@elsewhere.test> not added: elsewhere.test is not "
                        r"served here")
        time.sleep(0.5)
        self.assertEqual(len(self.primary.transactions), 1)  # nothing went to elsewhere.test

    def test_a_milter_that_removes_every_recipient_discards_the_message(self):
        self.start(stage="eom", edits=json.dumps([["delrcpt", "<bob@example.test>"]]))
        self.assertTrue(self.send()[-1].startswith("250"))
        self.b.wait_log(r"discarded id=\S+ .*every recipient removed")
        self.assertEqual(self.b.queue(), [])
        self.assertEqual(self.primary.transactions, [])

    def test_quarantine_holds_the_message(self):
        self.start(stage="eom", edits=json.dumps([["quarantine", "looks like spam"]]))
        self.assertTrue(self.send()[-1].startswith("250"))
        wait_until(lambda: self.b.queue(), what="held message")
        q = self.b.queue()
        self.assertIn("looks like spam", q[0]["held"])
        time.sleep(1.5)
        self.assertEqual(self.primary.transactions, [])  # held: never delivered
        self.assertIn("held id=", self.b.log())

    def test_dead_milter_tempfails_by_default(self):
        self.start()
        self.milter.stdin.close()
        self.milter.wait(10)
        replies = self.send()
        self.assertTrue(any(r.startswith("451") for r in replies), replies)
        self.assertEqual(self.b.queue(), [])

    def send_large(self, mb):
        body = b"".join(b"%06d " % i + b"." * (i % 5) + b"m" * (i * 31 % 700) + b"\r\n"
                        for i in range(mb * 3000))
        body = body[:mb * 1024 * 1024 - 200] + b"\r\nend\r\n"
        head = b"Subject: large\r\nX-Spam-Flag: NO\r\n\r\n"
        s = self.b.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test"], head + body)
        s.quit()
        return body

    def test_large_message_streams_through_the_milter_and_keeps_its_edits(self):
        import hashlib
        edits = [["add", "X-Spam-Score", "1.5"], ["change", "X-Spam-Flag", 1, "YES"]]
        self.start(stage="eom", edits=json.dumps(edits))
        base_mb = vm_hwm_mb(self.b.proc.pid)  # the server's own, before the message
        body = self.send_large(8)
        peak_mb = vm_hwm_mb(self.b.proc.pid)
        eom = [e for e in self.seen() if e["cb"] == "eom"][0]
        self.assertEqual(eom["args"][0], len(body), "the milter did not see the whole body")
        self.assertEqual(eom["args"][2], hashlib.sha256(body).hexdigest())
        wait_until(lambda: self.primary.transactions, timeout=60, what="delivery")
        data = self.primary.transactions[0]["data"]
        self.assertIn(b"X-Spam-Score: 1.5\r\n", data)
        self.assertIn(b"X-Spam-Flag: YES\r\n", data)
        sent = data[:-3].replace(b"\r\n..", b"\r\n.")  # unstuff
        self.assertTrue(sent.endswith(b"\r\n\r\n" + body), "body changed on the way")
        # Held whole, the body alone would add 8 MB (and a copy for the milter, 8 more).
        print(f"\n  peak RSS {base_mb:.1f} MB before, {peak_mb:.1f} MB taking an 8 MB body")
        self.assertLess(peak_mb - base_mb, 7, f"peak RSS {base_mb:.1f} MB before, {peak_mb:.1f} "
                        "MB taking an 8 MB body")

    def test_large_message_body_replaced_by_the_milter(self):
        self.start(stage="eom", edits=json.dumps([["body", "replaced\r\n"]]))
        self.send_large(3)
        wait_until(lambda: self.primary.transactions, timeout=60, what="delivery")
        data = self.primary.transactions[0]["data"]
        self.assertTrue(data.endswith(b"\r\n\r\nreplaced\r\n.\r\n"), data[-200:])
        self.assertLess(len(data), 10000)


if __name__ == "__main__":
    main()
