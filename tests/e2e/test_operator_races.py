"""An operator's hold, delete or bounce while an attempt is in flight (issue 14 point 3). The
index used to keep the in-flight entry and requeue it after the attempt, and the attempt never
read `held`: a message held during an attempt was delivered anyway. Now the action waits for
the attempt: an attempt that has not sent its final dot stops before it (the primary discards
what it has), its outcome is recorded, and the action then works on what is still pending — a
bounce never yields both a delivery and a DSN.

The primary here holds its RCPT reply until the test lets it go, so the attempt is in flight,
before its dot, when the operator acts."""
import threading
import time

from harness import AdminClient, E2ETest, add_user, free_port, main, wait_until

SLOW = 'probe_interval = "1s"\nretry_min = "1s"\nretry_max = "2s"'


class InFlight(E2ETest):
    def start(self):
        self.go = threading.Event()
        self.rcpts_seen = 0

        def answer(rcpt):
            self.rcpts_seen += 1
            self.go.wait(20)  # bounded: the attempt is held in flight until the test says
            return "250 2.1.5 Ok"
        self.p = self.scripted(answer=answer).start()
        self.relay = self.sink().start()  # where DSNs go
        self.aport = free_port()
        self.b = self.backupmx({"example.test": f"127.0.0.1:{self.p.port}"},
                               extra_toml=f'[admin]\nlisten = ["127.0.0.1:{self.aport}"]',
                               extra_queue=SLOW + f'\nrelayhost = "127.0.0.1:{self.relay.port}"')
        pw = add_user(self.b, "ann", "operator")
        self.b.start()
        self.ann = AdminClient(self.aport)
        self.assertEqual(self.ann.login("ann", pw), 303)
        s = self.b.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test"], "Subject: raced\r\n\r\nbody\r\n")
        s.quit()
        wait_until(lambda: self.rcpts_seen >= 1, timeout=15, what="the attempt in flight")
        return self.b.queue()[0]["id"]

    def act_while_in_flight(self, act):
        """Runs act() (an operator's request) in a thread, lets the primary answer once the
        request is waiting, and returns act()'s result."""
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", act()))
        t.start()
        wait_until(lambda: "withdrawn id=" in self.b.log(), timeout=10,
                   what="the server to withdraw the message in flight")
        self.assertEqual(self.p.transactions, [])  # nothing delivered yet
        self.go.set()
        t.join(40)
        self.assertFalse(t.is_alive(), "the operator's request never came back")
        return out["r"]

    def test_hold_during_an_attempt_is_never_delivered_and_release_delivers_once(self):
        mid = self.start()
        status, body = self.act_while_in_flight(
            lambda: self.ann.api("POST", f"/api/v1/messages/{mid}/hold"))
        self.assertEqual((status, body["state"]), (200, "held"), body)
        self.b.cli("queue", "flush")
        time.sleep(3)  # retries and probes' worth
        self.assertEqual(self.p.transactions, [], "a held message was delivered")
        q = self.b.queue()
        self.assertEqual(len(q), 1)
        self.assertTrue(q[0]["held"], q)
        self.assertIn("its attempt ended", self.b.log())
        self.assertEqual(self.ann.api("POST", f"/api/v1/messages/{mid}/release")[0], 200)
        wait_until(lambda: len(self.p.transactions) == 1, timeout=20, what="delivery on release")
        wait_until(lambda: self.b.queue() == [], timeout=10, what="the released message gone")
        time.sleep(1)
        self.assertEqual(len(self.p.transactions), 1, "delivered twice")

    def test_bounce_during_an_attempt_gives_one_dsn_and_no_delivery(self):
        mid = self.start()
        status, body = self.act_while_in_flight(
            lambda: self.ann.api("POST", f"/api/v1/messages/{mid}/bounce"))
        self.assertEqual(status, 200, body)
        wait_until(lambda: len(self.relay.messages()) == 1, timeout=20, what="the DSN")
        time.sleep(3)
        self.assertEqual(self.p.transactions, [], "bounced and delivered both")
        self.assertEqual(len(self.relay.messages()), 1)
        self.assertEqual(self.b.queue(), [])

    def test_delete_during_an_attempt_is_never_delivered(self):
        mid = self.start()
        status, _ = self.act_while_in_flight(
            lambda: self.ann.api("DELETE", f"/api/v1/messages/{mid}"))
        self.assertEqual(status, 204)
        time.sleep(3)
        self.assertEqual(self.p.transactions, [], "a deleted message was delivered")
        self.assertEqual(self.b.queue(), [])

    def test_cli_hold_during_an_attempt_is_never_delivered(self):
        mid = self.start()
        r = self.act_while_in_flight(lambda: self.b.cli("queue", "hold", mid, check=False))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.b.cli("queue", "flush")
        time.sleep(3)
        self.assertEqual(self.p.transactions, [], "a held message was delivered")
        self.assertTrue(self.b.queue()[0]["held"])


if __name__ == "__main__":
    main()
