"""Replies matched to commands: a recipient counts as delivered only when the primary answered 354
to DATA and then 2xx after the final dot, on replies that were its own.

Every case runs against ScriptedPrimary: these are replies a real server does not give (a broken
proxy in front of the primary, an SMTP smuggling attempt through it, a crash after the dot).
A deferred message stays queued; a duplicate at the primary is acceptable, a loss is not.
"""
import re
import socket
import time

from harness import E2ETest, main, wait_until

ONE_TRY = 'retry_min = "1h"\nretry_max = "2h"\nprobe_interval = "1h"'
ID = re.compile(rb"with E?SMTP id ([0-9A-F]{16})")


def arrived_ids(primary):
    """Queue ids of the messages the primary received a whole body of (from our Received:)."""
    with primary.lock:
        return [m.group(1).decode() for t in primary.transactions
                for m in [ID.search(t["data"])] if m]


class PrimaryReplies(E2ETest):
    def one_message(self, extra_queue=ONE_TRY, extra_toml="", **primary_kw):
        """One message through a primary scripted with `primary_kw`; its id and first outcome
        ("delivered", "deferred" or "bounced") with the log line."""
        self.primary = self.scripted(**primary_kw).start()
        self.b = self.backupmx({"example.test": f"127.0.0.1:{self.primary.port}"},
                               extra_queue=extra_queue, extra_toml=extra_toml).start()
        s = self.b.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test"],
                   b"Subject: replies\r\n\r\nthe body\r\n")
        s.quit()
        line = wait_until(lambda: re.search(r"^.*\b(delivered|deferred|bounced) id=(\S+) .*$",
                                            self.b.log(), re.M), what="the first outcome")
        return line.group(2), line.group(1), line.group(0)

    def assert_deferred_and_kept(self, outcome, line, why):
        self.assertEqual(outcome, "deferred", line)
        self.assertIn(why, line)
        self.assertEqual(len(self.b.queue()), 1, "the message must stay queued")
        self.assertNotIn(" delivered id=", self.b.log())

    # --- the reply to DATA ---------------------------------------------------------------------

    def test_250_to_data_defers_and_keeps_the_message_never_sent(self):
        mid, outcome, line = self.one_message(data_cmd_reply="250 2.0.0 Ok")
        self.assert_deferred_and_kept(outcome, line, "no longer match commands ('250 2.0.0 Ok' "
                                                     "after DATA)")
        self.assertEqual(self.primary.transactions, [], "no body was sent")

    def test_other_3xx_to_data_defers(self):
        mid, outcome, line = self.one_message(data_cmd_reply="334 VXNlcm5hbWU6")
        self.assert_deferred_and_kept(outcome, line, "'334 VXNlcm5hbWU6' after DATA")

    def test_4xx_to_data_defers_with_the_primarys_reply(self):
        mid, outcome, line = self.one_message(data_cmd_reply="451 4.3.0 try again later")
        self.assert_deferred_and_kept(outcome, line, 'reply="451 4.3.0 try again later"')

    def test_5xx_to_data_bounces_with_the_primarys_reply(self):
        mid, outcome, line = self.one_message(data_cmd_reply="554 5.7.1 transaction refused")
        self.assertEqual(outcome, "bounced", line)
        self.assertIn('reply="554 5.7.1 transaction refused"', line)
        self.assertEqual(self.primary.transactions, [])

    # --- the reply after the final dot ---------------------------------------------------------

    def test_3xx_after_the_dot_defers(self):
        mid, outcome, line = self.one_message(after_dot=["354 go ahead again"])
        self.assert_deferred_and_kept(outcome, line, "'354 go ahead again' after end of data")

    def test_4xx_after_the_dot_defers(self):
        mid, outcome, line = self.one_message(after_dot=["452 4.3.1 out of disk"])
        self.assert_deferred_and_kept(outcome, line, 'reply="452 4.3.1 out of disk"')

    def test_5xx_after_the_dot_bounces(self):
        mid, outcome, line = self.one_message(after_dot=["550 5.7.1 content refused"])
        self.assertEqual(outcome, "bounced", line)
        self.assertIn('reply="550 5.7.1 content refused"', line)

    def test_two_replies_to_one_dot_count_nothing_delivered_on_them(self):
        """Both replies in one write: which one answered the dot is unknown, so the message is
        deferred (the primary has it: a duplicate later, never a loss)."""
        mid, outcome, line = self.one_message(after_dot=["250 2.0.0 Ok: queued\r\n250 2.0.0 Ok"])
        self.assert_deferred_and_kept(outcome, line, "more data after the reply to the final dot")
        self.assertEqual(arrived_ids(self.primary), [mid])

    def test_connection_dropped_after_the_dot_with_no_reply_defers(self):
        mid, outcome, line = self.one_message(after_dot=[], after_dot_then="drop")
        self.assert_deferred_and_kept(outcome, line, "lost connection with")
        self.assertIn("after end of data", line)
        self.assertEqual(arrived_ids(self.primary), [mid], "the primary has it: at least once")

    def test_a_reply_that_never_comes_defers_after_reply_timeout(self):
        start = time.monotonic()
        mid, outcome, line = self.one_message(after_dot=[], after_dot_then="stall",
                                              extra_toml='[delivery]\nreply_timeout = "2s"')
        took = time.monotonic() - start
        self.assert_deferred_and_kept(outcome, line, "timeout after end of data")
        self.assertGreaterEqual(took, 2.0, "not before reply_timeout")
        self.assertLess(took, 15.0)

    # --- a reused connection that falls out of step --------------------------------------------

    def test_an_extra_reply_after_the_dot_on_a_reused_connection_loses_nothing(self):
        """The primary answers every final dot twice (what an SMTP smuggling attempt through it
        produces). Five messages wait, then go over reused connections: every message logged
        delivered arrived, and all five arrive."""
        primary = self.scripted(after_dot=["250 2.0.0 Ok: queued", "250 2.0.0 Ok: extra"])
        b = self.backupmx({"example.test": f"127.0.0.1:{primary.port}"},
                          extra_queue='retry_min = "1s"\nretry_max = "1s"\nprobe_interval = "1s"'
                                      "\nmax_concurrency = 1\ninitial_concurrency = 1").start()
        s = b.smtp()
        for i in range(5):
            s.sendmail("alice@sender.test", ["bob@example.test"],
                       f"Subject: number {i}\r\n\r\nbody {i}\r\n".encode())
        s.quit()
        wait_until(lambda: len(b.queue()) == 5, what="five queued while the primary is down")
        queued = {m["id"] for m in b.queue()}
        primary.start()
        wait_until(lambda: queued <= set(arrived_ids(primary)), timeout=60,
                   what="all five at the primary")
        delivered = set(re.findall(r" delivered id=(\S+)", b.log()))
        self.assertLessEqual(delivered, set(arrived_ids(primary)),
                             "a message was counted delivered on a reply that was not its own")
        gone = queued - {m["id"] for m in b.queue()}
        self.assertLessEqual(gone, set(arrived_ids(primary)), "removed but never arrived")
        self.assertIn("no longer match commands", b.log())

    # --- the connection itself -----------------------------------------------------------------

    def test_a_primary_that_accepts_and_never_greets_defers_after_reply_timeout(self):
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever speaks
        self.stoppers.append(silent.close)
        port = silent.getsockname()[1]
        b = self.backupmx({"example.test": f"127.0.0.1:{port}"}, extra_queue=ONE_TRY,
                          extra_toml='[delivery]\nreply_timeout = "2s"').start()
        start = time.monotonic()
        s = b.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test"], b"Subject: x\r\n\r\nx\r\n")
        s.quit()
        line = b.wait_log(r"deferred id=.*", timeout=20)
        self.assertRegex(b.log(), r'deferred id=.* error="timeout waiting for the greeting"')
        self.assertGreaterEqual(time.monotonic() - start, 2.0)
        self.assertEqual(len(b.queue()), 1)

    def test_a_connect_that_hangs_defers_after_connect_timeout(self):
        """A listener whose accept queue is full: the kernel drops further SYNs, so the connect
        neither succeeds nor fails until connect_timeout."""
        full = socket.socket()
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        self.stoppers.append(full.close)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(4):  # fill the queue (backlog 0 still takes one or two)
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(c)
            self.stoppers.append(c.close)
        time.sleep(0.3)
        b = self.backupmx({"example.test": f"127.0.0.1:{port}"}, extra_queue=ONE_TRY,
                          extra_toml='[delivery]\nconnect_timeout = "2s"\nreply_timeout = "1m"')
        b.start()
        start = time.monotonic()
        s = b.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test"], b"Subject: x\r\n\r\nx\r\n")
        s.quit()
        b.wait_log(r"deferred id=.*", timeout=20)
        took = time.monotonic() - start
        self.assertRegex(b.log(), r'deferred id=.* error="timeout connecting to ')
        self.assertGreaterEqual(took, 2.0)
        self.assertLess(took, 15.0, "reply_timeout (1m) must not govern the connect")


if __name__ == "__main__":
    main()
