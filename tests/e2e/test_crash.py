"""Durability: every message that got 250 survives kill -9 of the server and reaches the primary.

Killed under load (small bodies); mid-DATA and at the end of DATA of bodies that go through the
spool (two body pieces, 128 KiB, or more); and mid-delivery to a slow primary. (That a 250 waits
for an fsync, which a kill -9 cannot show, is test_fsync_trace's.)"""
import os
import re
import select
import smtplib
import threading
import time

from harness import E2ETest, Raw, main, wait_until

SENDERS = 20          # concurrent client threads
PER_SESSION = 10      # messages per SMTP session


class Load:
    """Client threads sending uniquely tagged messages until told to stop or the server dies."""

    def __init__(self, port, prefix, target):
        self.port, self.prefix, self.target = port, prefix, target
        self.accepted, self.uncertain = set(), set()
        self.lock = threading.Lock()
        self.counter = 0
        self.stop = threading.Event()

    def next_tag(self):
        with self.lock:
            if self.counter >= self.target:
                return None
            self.counter += 1
            return f"{self.prefix}-{self.counter:05d}"

    def worker(self):
        while not self.stop.is_set():
            try:
                s = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
                s.ehlo("load.test")
            except OSError:
                return
            for _ in range(PER_SESSION):
                tag = self.next_tag()
                if tag is None or self.stop.is_set():
                    s.close()
                    return
                body = (f"Subject: {tag}\r\nMessage-ID: <{tag}@load.test>\r\n\r\n"
                        + f"{tag} body line\r\n" * 100)
                try:
                    s.sendmail("load@sender.test", [f"u{tag[-1]}@example.test"], body)
                    with self.lock:
                        self.accepted.add(tag)
                except (smtplib.SMTPException, OSError):
                    with self.lock:
                        self.uncertain.add(tag)  # in flight at the kill: may or may not be kept
                    s.close()
                    return
            try:
                s.quit()
            except (smtplib.SMTPException, OSError):
                pass

    def run_async(self):
        self.threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(SENDERS)]
        for t in self.threads:
            t.start()
        return self

    def join(self):
        for t in self.threads:
            t.join(120)


class Crash(E2ETest):
    def test_kill9_under_load_loses_nothing(self):
        sink = self.sink()  # the primary stays down while we load and kill
        b = self.backupmx({"example.test": f"127.0.0.1:{sink.port}"},
                          extra_queue='probe_interval = "1s"\nretry_min = "1h"\nretry_max = "2h"')
        b.start()
        first = Load(b.port, "A", 100000).run_async()
        wait_until(lambda: len(first.accepted) >= 700, timeout=180, what="700 accepted")
        b.kill9()  # mid-load, sessions open, commits in flight
        first.stop.set()
        first.join()
        b.start()  # same store
        second = Load(b.port, "B", 500).run_async()
        second.join()
        accepted = first.accepted | second.accepted
        uncertain = first.uncertain | second.uncertain
        self.assertGreaterEqual(len(accepted), 1000)
        self.assertEqual(len(second.accepted), 500)
        sink.start()
        wait_until(lambda: b.queue() == [], timeout=300, what="queue drained")
        delivered = {}
        for m in sink.messages():
            tag = re.search(rb"Subject: ([AB]-\d{5})", m["content"]).group(1).decode()
            delivered[tag] = delivered.get(tag, 0) + 1
        missing = accepted - set(delivered)
        self.assertEqual(missing, set(), f"{len(missing)} messages got 250 and were lost")
        unknown = set(delivered) - accepted - uncertain
        self.assertEqual(unknown, set(), "delivered messages nobody sent")
        dups = {t for t, n in delivered.items() if n > 1}
        self.assertEqual(dups, set(), "duplicates although nothing was being delivered")
        print(f"accepted={len(accepted)} uncertain={len(uncertain)} "
              f"delivered={len(delivered)} (of the uncertain: {len(uncertain & set(delivered))})")

    # -- bodies through the spool (over 128 KiB) ----------------------------------------------

    def test_kill9_mid_data_of_4_large_bodies_after_5_accepted_keeps_the_5_and_no_part(self):
        sink = self.sink()  # down until the end
        b = self.backupmx({"example.test": f"127.0.0.1:{sink.port}"}, extra_queue=PRIMARY_DOWN)
        b.start()
        sent = {}  # tag -> (queue id, body lines)
        s = b.smtp()
        for i in range(5):
            tag = f"W-{i}"
            text, lines = large_body(tag, 150_000 + 40_000 * i)
            sent[tag] = (send_one(s, tag, text), lines)
        s.quit()
        partial = []
        for i in range(4):  # spooled each, and no final dot
            r = open_data(b.port, f"P-{i}")
            r.send(large_body(f"P-{i}", 1_000_000)[0][:300_000])
            partial.append(r)
        wait_until(lambda: spools(b.proc.pid) >= 4, what="the 4 unfinished bodies being spooled")
        b.kill9()
        for r in partial:
            self.assertEqual(read_reply(r), "", "no reply to a body cut off by the kill")
        ids = {i for i, _ in sent.values()}
        self.assertEqual({m["id"] for m in b.queue()}, ids, "the 5 accepted, no part of the 4")
        b.start()
        self.assertEqual({m["id"] for m in b.queue()}, ids)
        self.assertEqual([n for n in os.listdir(b.dir) if ".spool-" in n], [],
                         "a crash leaves no spool file behind")
        sink.start()
        wait_until(lambda: b.queue() == [], timeout=60, what="queue drained")
        got = delivered(sink)
        self.assertEqual(set(got), set(sent), "exactly the 5 accepted arrive")
        for tag, (_, lines) in sent.items():
            self.assertEqual(got[tag], [lines], f"{tag}: delivered once, whole")

    def test_kill9_as_16_sessions_end_data_of_large_bodies_keeps_every_250_in_4_rounds(self):
        sink = self.sink()  # down until the end
        b = self.backupmx({"example.test": f"127.0.0.1:{sink.port}"}, extra_queue=PRIMARY_DOWN)
        b.start()
        accepted, uncertain, lines_of = {}, set(), {}
        # Killed as the dots are sent, at the first 250, 5 ms and 50 ms after it: before, within
        # and after the commits of the 16.
        for rnd, wait_first in enumerate([None, 0.0, 0.005, 0.05]):
            sessions = {}
            for n in range(16):
                tag = f"E{rnd}-{n:02d}"
                text, lines_of[tag] = large_body(tag, 140_000 + 10_000 * n)
                r = open_data(b.port, tag)
                r.send(text)  # all but the final dot
                sessions[tag] = r
            wait_until(lambda: spools(b.proc.pid) >= 16, what="16 bodies being spooled")
            for r in sessions.values():
                r.send(b".\r\n")
            if wait_first is not None:
                socks = [r.s for r in sessions.values()]
                readable, _, _ = select.select(socks, [], [], 30)
                self.assertTrue(readable, "no reply at all within 30 s of the dots")
                time.sleep(wait_first)
            b.kill9()
            for tag, r in sessions.items():
                reply = read_reply(r)
                if reply.startswith("250"):
                    accepted[tag] = reply.rsplit("queued as ", 1)[1].strip()
                else:
                    self.assertEqual(reply, "", f"{tag}: not a 250 and not cut off")
                    uncertain.add(tag)
            b.start()  # the same store
            queued = {m["id"] for m in b.queue()}
            self.assertLessEqual(set(accepted.values()), queued,
                                 f"round {rnd}: a message that got 250 is not in the queue")
            self.assertLessEqual(len(queued), len(accepted) + len(uncertain))
            print(f"round {rnd}: {len(accepted)} accepted, {len(uncertain)} cut off so far")
        self.assertGreaterEqual(len(accepted), 2)  # the rounds killed at or after a 250
        sink.start()
        wait_until(lambda: b.queue() == [], timeout=120, what="queue drained")
        got = delivered(sink)
        self.assertEqual(set(accepted) - set(got), set(), "messages that got 250 were lost")
        self.assertEqual(set(got) - set(accepted) - uncertain, set(), "mail nobody sent")
        for tag, copies in got.items():
            self.assertEqual(copies, [lines_of[tag]], f"{tag}: delivered once, whole")

    # -- during delivery -----------------------------------------------------------------------

    def test_kill9_during_delivery_of_20_to_a_slow_primary_removes_none_before_its_2xx(self):
        primary = self.scripted(data_delay=1.0)  # bound, not listening yet: down
        b = self.backupmx({"example.test": f"127.0.0.1:{primary.port}"},
                          extra_queue='probe_interval = "1s"\nretry_min = "1s"\nretry_max = "2s"')
        b.start()
        sent = {}  # tag -> (queue id, body lines)
        s = b.smtp()
        for i in range(20):  # every other one through the spool
            tag = f"D-{i:02d}"
            text, lines = large_body(tag, 200_000 if i % 2 else 3_000)
            sent[tag] = (send_one(s, tag, text), lines)
        s.quit()
        primary.start()
        # Some answered, and others whose DATA the primary has and has not answered yet.
        wait_until(lambda: len(primary.transactions) >= 2
                   and primary.data_commands > len(primary.transactions), timeout=60,
                   what="deliveries answered and others in flight")
        b.kill9()
        answered = {subject(t["data"]) for t in list(primary.transactions)}  # after: a superset
        in_flight = primary.data_commands - len(answered)
        queued = {m["id"] for m in b.queue()}
        unanswered = {sent[t][0] for t in sent if t not in answered}
        self.assertEqual(unanswered - queued, set(),
                         "removed from the queue before the primary answered 2xx")
        primary.data_delay = 0
        b.start()
        wait_until(lambda: b.queue() == [], timeout=60, what="queue drained after the restart")
        wait_until(lambda: primary.active == 0, what="the killed deliveries' connections ended")
        got = {}
        for t in list(primary.transactions):
            got.setdefault(subject(t["data"]), []).append(
                t["data"].count(body_line(subject(t["data"])).encode()))
        self.assertEqual(set(sent) - set(got), set(), "messages that got 250 were lost")
        self.assertEqual(set(got) - set(sent), set(), "mail nobody sent")
        for tag, counts in got.items():
            self.assertEqual(set(counts), {sent[tag][1]}, f"{tag}: every copy whole")
        dups = sum(len(c) - 1 for c in got.values())
        print(f"answered before the kill: {len(answered)}, in flight: {in_flight}, "
              f"duplicates after the restart: {dups}")


PRIMARY_DOWN = 'probe_interval = "1s"\nretry_min = "1h"\nretry_max = "2h"'


def body_line(tag):
    return f"{tag} {'y' * 70}\r\n"


def large_body(tag, size):
    """(message text, its number of body lines), about `size` bytes, the tag in every line."""
    n = size // len(body_line(tag)) + 1
    return (f"Subject: {tag}\r\nMessage-ID: <{tag}@crash.test>\r\n\r\n"
            + body_line(tag) * n), n


def send_one(s, tag, text):
    """One message on an open smtplib session; its queue id."""
    s.mail("crash@sender.test")
    s.rcpt(f"u-{tag}@example.test")
    code, msg = s.data(text)
    assert code == 250, (tag, code, msg)
    return msg.decode().rsplit("queued as ", 1)[1].strip()


def open_data(port, tag):
    """A raw session that has been told 354: what it sends next is the body."""
    r = Raw(port, timeout=30)
    assert r.reply().startswith("220")
    assert r.cmd("EHLO crash.test").startswith("250")
    assert r.cmd("MAIL FROM:<crash@sender.test>").startswith("250")
    assert r.cmd(f"RCPT TO:<u-{tag}@example.test>").startswith("250")
    assert r.cmd("DATA").startswith("354")
    return r


def read_reply(r):
    """The reply a killed server had written before it died, or '' (cut off)."""
    try:
        return r.reply()
    except OSError:  # reset: the server died with our bytes unread
        return ""
    finally:
        r.close()


def spools(pid):
    """How many spool files (nameless, of bodies being received) the process has open."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += ".spool-" in os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return n


def subject(data):
    m = re.search(rb"^Subject: (\S+)", data, re.M)
    return m.group(1).decode() if m else None


def delivered(sink):
    """tag -> [body lines of each copy the sink got]."""
    got = {}
    for m in sink.messages():
        tag = subject(m["content"])
        got.setdefault(tag, []).append(m["content"].count(body_line(tag)[:-2].encode() + b"\n"))
    return got


if __name__ == "__main__":
    main()
