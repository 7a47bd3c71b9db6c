"""A fleet: several backupmx nodes on one PostgreSQL store (issue 8). Nodes are killed for real
(SIGKILL) while accepting and while delivering, the database is cut off and comes back, and every
message that got a 250 must reach the primary. Real PostgreSQL 15 clusters are started here."""
import re
import smtplib
import sys
import subprocess
import threading
import time

from harness import BIN, AdminClient, E2ETest, add_user, free_port, main, wait_until
from pg import PgCluster

SLOW_ONE = 'probe_interval = "1h"\nretry_min = "1h"\nretry_max = "2h"'
FAST = 'probe_interval = "1s"\nretry_min = "1s"\nretry_max = "2s"\nlease = "5s"'


THREE = (("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.4"))


class FleetBase(E2ETest):
    def node(self, name, host, primary_port, store=None, domains=None, extra="", toml="",
             wait=True, timing=FAST):
        b = self.backupmx(domains or {"fleet.test": f"127.0.0.1:{primary_port}"},
                          store=store or self.url,
                          host=host, name=name, extra_toml=toml,
                          extra_queue=timing + f'\nnode = "{name}"\n'
                          f'control_socket = "{self.dir}/{name}.sock"\n{extra}')
        b.start(wait=wait)
        return b

    def three_holding(self, primary_port, prefix, count, extra=""):
        """Nodes a, b and c (127.0.0.2-4), holding `count` messages between them."""
        nodes = [self.node(n, h, primary_port, extra=extra) for n, h in THREE]
        accepted = []
        self.send_many(nodes, prefix, count, accepted)
        self.assertEqual(len(accepted), count)
        return nodes, accepted

    def send_many(self, nodes, prefix, count, accepted, stop=None):
        """Sends `count` messages round-robin; records the subjects that got 250."""
        for i in range(count):
            if stop and stop.is_set():
                return
            b = nodes[i % len(nodes)]
            subject = f"{prefix}-{i}"
            try:
                s = smtplib.SMTP(b.host, b.port, timeout=10)
                s.sendmail("alice@sender.test", [f"u{i}@fleet.test"],
                           f"Subject: {subject}\r\n\r\nbody {i}\r\n")
                s.quit()
                accepted.append(subject)
            except (OSError, smtplib.SMTPException):
                # Refused or cut off: the sender keeps it and retries (not our promise). It waits
                # a moment first, as a sending MTA does: a quick refusal must not use up `count`
                # before an outage ends.
                time.sleep(0.1)


class Fleet(FleetBase):
    def setUp(self):
        super().setUp()
        self.pg = PgCluster(self.dir, free_port())
        self.stoppers.append(self.pg.stop)
        self.pg.start()
        self.url = self.pg.url("backupmx") + "?connect_timeout=5"

    def test_nodes_killed_while_accepting_and_delivering_lose_nothing(self):
        primary_port = free_port()
        a = self.node("a", "127.0.0.2", primary_port)
        b = self.node("b", "127.0.0.3", primary_port)
        c = self.node("c", "127.0.0.4", primary_port)
        accepted = []
        sender = threading.Thread(target=self.send_many, args=([a, b, c], "m", 90, accepted))
        sender.start()
        wait_until(lambda: len(accepted) >= 30, what="mail accepted by the fleet")
        a.kill9()  # node a dies while accepting
        sender.join(120)
        self.assertGreaterEqual(len(accepted), 60)
        sink = self.sink(port=primary_port).start()  # the primary comes back
        wait_until(lambda: len(sink.messages()) >= 5, timeout=30, what="delivery started")
        b.kill9()  # node b dies while delivering
        # c takes over what a and b owned once their leases run out, and delivers it
        wait_until(lambda: set(accepted) <= sink.subjects(), timeout=90,
                   what="every accepted message at the primary")
        c.wait_log(r"took over id=")
        missing = set(accepted) - sink.subjects()
        self.assertEqual(missing, set())
        wait_until(lambda: self.pg.sql("SELECT count(*) FROM messages", "backupmx") == "0",
                   timeout=30, what="an empty queue")

    def test_each_message_is_delivered_once_in_normal_running(self):
        primary_port = free_port()
        sink = self.sink(port=primary_port).start()
        nodes = [self.node(n, h, primary_port)
                 for n, h in THREE]
        accepted = []
        self.send_many(nodes, "once", 60, accepted)
        self.assertEqual(len(accepted), 60)
        wait_until(lambda: set(accepted) <= sink.subjects(), timeout=60, what="all delivered")
        time.sleep(1)
        self.assertEqual(len(sink.messages()), 60, "a message was delivered twice")

    def test_a_node_cut_off_from_the_database_answers_451_and_recovers(self):
        primary_port = free_port()
        sink = self.sink(port=primary_port).start()
        a = self.node("a", "127.0.0.2", primary_port)
        s = a.smtp()
        s.sendmail("alice@sender.test", ["u1@fleet.test"], "Subject: before\r\n\r\nx\r\n")
        self.pg.stop()  # the database is gone
        s.mail("alice@sender.test")
        s.rcpt("u2@fleet.test")
        code, msg = s.data("Subject: during\r\n\r\nx\r\n")
        self.assertEqual(code, 451, msg)
        self.assertIn(b"4.3.0", msg)
        self.assertEqual(s.noop()[0], 250)  # the session stays alive
        self.pg.start()
        wait_until(lambda: self._try_send(s, "after") == 250, timeout=30,
                   what="a 250 once the database is back")
        s.quit()
        wait_until(lambda: {"before", "after"} <= sink.subjects(), timeout=30,
                   what="delivery after the database came back")
        self.assertNotIn("during", sink.subjects())

    def test_a_node_started_while_the_database_is_down_waits_for_it(self):
        import socket
        primary_port = free_port()
        sink = self.sink(port=primary_port).start()
        self.pg.stop()
        a = self.node("a", "127.0.0.2", primary_port, wait=False)
        b = self.node("b", "127.0.0.3", primary_port, wait=False)
        for n in (a, b):
            n.wait_log(r"cannot reach the PostgreSQL store.*not accepting mail, trying again in")
        a.wait_log(r"trying again in 2s")  # backing off, still alive
        self.assertIsNone(a.proc.poll())
        with self.assertRaises(OSError):  # not listening: senders go to another MX
            socket.create_connection((a.host, a.port), timeout=2).close()
        self.assertEqual(b.stop(), 0)  # a signal still stops a waiting node
        b.wait_log(r"stopped while waiting for the store")
        self.pg.start()
        wait_until(lambda: "backupmx ready" in a.log(), timeout=60, what="a ready once the "
                   "database is back")
        s = a.smtp()
        s.sendmail("alice@sender.test", ["u1@fleet.test"], "Subject: late\r\n\r\nx\r\n")
        s.quit()
        wait_until(lambda: "late" in sink.subjects(), timeout=30, what="delivery")

    def test_a_read_only_database_gets_451_and_250_again_once_writable(self):
        primary_port = free_port()
        sink = self.sink(port=primary_port).start()
        a = self.node("a", "127.0.0.2", primary_port)
        self.pg.sql("ALTER SYSTEM SET default_transaction_read_only = on")
        self.pg.sql("SELECT pg_reload_conf()")
        s = a.smtp()
        wait_until(lambda: self._try_send(s, "read-only") == 451, timeout=20,
                   what="451 from a read-only database")
        self.assertEqual(s.noop()[0], 250)
        self.assertRegex(a.log(), r"store failure, answering 451 .*read-only transaction")
        self.pg.sql("ALTER SYSTEM SET default_transaction_read_only = off")
        self.pg.sql("SELECT pg_reload_conf()")
        wait_until(lambda: self._try_send(s, "writable") == 250, timeout=30,
                   what="250 once the database takes writes again")
        s.quit()
        wait_until(lambda: "writable" in sink.subjects(), timeout=30, what="delivery")
        self.assertNotIn("read-only", sink.subjects())

    def test_the_fleet_as_a_whole_keeps_to_max_concurrency(self):
        primary = self.scripted(data_delay=0.3)  # bound, not listening yet: down
        self.three_holding(primary.port, "cap", 30,
                           extra='max_concurrency = 2\ninitial_concurrency = 2')
        primary.start()  # back: three nodes, each would open 2 on its own
        wait_until(lambda: len(primary.transactions) >= 30, timeout=90, what="all delivered")
        self.assertLessEqual(primary.max_active, 2, "the fleet opened more than max_concurrency")

    def test_slow_start_holds_for_the_fleet_as_a_whole(self):
        # Each delivery takes 1.5 s: until the first one is through, the fleet may open one
        # connection (initial_concurrency), although three nodes hold mail and learn at once
        # that the primary is back. Then the window grows, up to max_concurrency in all.
        primary = self.scripted(data_delay=1.5)  # bound, not listening yet: down
        self.three_holding(primary.port, "slow", 12,
                           extra='max_concurrency = 3\ninitial_concurrency = 1')
        primary.start()
        wait_until(lambda: len(primary.transactions) >= 12, timeout=90, what="all delivered")
        first = [n for n, done in primary.mails if done == 0]
        self.assertTrue(first, primary.mails)
        self.assertEqual(max(first), 1, f"before any delivery went through: {primary.mails}")
        self.assertGreaterEqual(max(n for n, _ in primary.mails), 2, "the window never grew")
        self.assertLessEqual(primary.max_active, 3, "the fleet opened more than max_concurrency")
        self.assertGreaterEqual(len({t["rcpts"][0] for t in primary.transactions}), 12)

    def test_every_node_sends_within_seconds_of_the_primarys_return(self):
        # One node probes (every 15 s here); the others read the shared state every second while
        # they hold mail for a down primary, so they do not wait for a probe turn (15 s) or a
        # lease renewal (10 s) of their own.
        slow_probe = 'probe_interval = "15s"\nretry_min = "1s"\nretry_max = "2s"\nlease = "30s"'
        primary_port = free_port()
        nodes = [self.node(n, h, primary_port, timing=slow_probe)
                 for n, h in THREE]
        accepted = []
        self.send_many(nodes[:1], "back-a", 3, accepted)
        nodes[0].wait_log(r"primary for fleet.test is down")
        time.sleep(7)  # b and c find it down 7 s later: their probe turns come 7 s after a's
        self.send_many(nodes[1:], "back-bc", 6, accepted)
        self.assertEqual(len(accepted), 9)
        for n in nodes[1:]:
            n.wait_log(r"primary for fleet.test is down")
        sink = self.sink(port=primary_port).start()
        wait_until(lambda: set(accepted) <= sink.subjects(), timeout=60, what="all delivered")

        def first_delivery(n):
            import datetime
            m = re.search(r"^(\S+ \S+) info delivered id=", n.log(), re.M)
            return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        firsts = sorted(first_delivery(n) for n in nodes)
        print(f"first deliveries of the three nodes within {firsts[-1] - firsts[0]:.2f} s",
              file=sys.stderr)
        self.assertLessEqual(firsts[-1] - firsts[0], 3.0, f"first deliveries per node: {firsts}")

    def test_the_console_works_on_every_node_and_shows_the_fleets_view(self):
        down = free_port()  # the primary is down: one node probes it for the fleet
        ports = {"a": free_port(), "b": free_port()}
        nodes = {n: self.node(n, h, down, toml=f'[admin]\nlisten = ["{h}:{ports[n]}"]\n')
                 for n, h in (("a", "127.0.0.2"), ("b", "127.0.0.3"))}
        pw = add_user(nodes["a"], "ann", "operator")  # one account for the fleet
        on_a = AdminClient(ports["a"], host="127.0.0.2")
        self.assertEqual(on_a.login("ann", pw), 303)
        # the same browser session is good on the other node (a load balancer needs no stickiness)
        on_b = AdminClient(ports["b"], host="127.0.0.3")
        on_b.cookies, on_b.csrf = dict(on_a.cookies), on_a.csrf
        self.assertEqual(on_b.api("GET", "/api/v1/me")[0], 200)
        status, _ = on_b.api("POST", "/api/v1/domains/fleet.test/flush")
        self.assertIn(status, (200, 202))  # the CSRF token holds there too
        # both nodes show the probes of whichever node probes (every second here)
        self.send_many([nodes["a"]], "held", 1, [])

        def last_probes():
            out = []
            for c in (on_a, on_b):
                st = c.api("GET", "/api/v1/domains/fleet.test")[1]["primary_state"]
                if st["state"] != "down" or not st["last_probe"]:
                    return None
                out.append(st["last_probe"])
            return out
        wait_until(lambda: last_probes() is not None, timeout=30, what="both see it down")
        first = last_probes()
        time.sleep(8)  # (the others read the shared state every lease/3, and at each probe turn)
        later = last_probes()
        self.assertTrue(all(b > a for a, b in zip(first, later)), (first, later))
        # failed logins count for the fleet: 5 on b, and a refuses too (429, not even checked)
        for _ in range(5):
            self.assertEqual(AdminClient(ports["b"], host="127.0.0.3").login("ann", "guess"), 401)
        self.assertEqual(AdminClient(ports["a"], host="127.0.0.2").login("ann", pw), 429)
        # logging out on b ends the session on a too
        self.assertEqual(on_b.request("POST", "/logout", "", {"X-CSRF-Token": on_b.csrf})[0], 303)
        self.assertEqual(on_a.api("GET", "/api/v1/me")[0], 401)

    def test_a_client_cannot_multiply_its_rate_by_the_number_of_nodes(self):
        limits = "[policy]\nlimit_exceptions = []\nmessage_rate = 12\nspf = false"
        nodes = [self.node(n, h, free_port(), toml=limits)
                 for n, h in THREE]
        sessions = [n.smtp() for n in nodes]
        accepted = refused = 0
        for i in range(36):  # 36 MAIL FROMs in about 5 s, spread over the three nodes
            code, msg = sessions[i % 3].mail("alice@sender.test")
            if code == 250:
                accepted += 1
            else:
                self.assertEqual(code, 450, msg)
                self.assertIn(b"message_rate", msg)
                refused += 1
            sessions[i % 3].rset()
            time.sleep(0.15)
        for s in sessions:
            s.quit()
        # Alone, each node would take 12 (36 in all). Shared every second, the fleet takes 12
        # plus at most what reached the other nodes within that second.
        print(f"fleet accepted {accepted} of 36", file=sys.stderr)
        self.assertGreaterEqual(accepted, 12)
        self.assertLessEqual(accepted, 20, f"{accepted} MAIL FROMs accepted by the fleet")

    def test_a_down_primary_is_probed_by_one_node_at_a_time(self):
        import socket
        knock = socket.socket()
        knock.bind(("127.0.0.1", 0))
        knock.listen(64)
        port = knock.getsockname()[1]
        stop, seen = threading.Event(), []

        def count():  # a primary that is "down": it takes the connection and drops it
            knock.settimeout(0.2)
            while not stop.is_set():
                try:
                    c, _ = knock.accept()
                    seen.append(time.monotonic())
                    c.close()
                except OSError:
                    pass
        t = threading.Thread(target=count)
        t.start()
        try:
            nodes = [self.node(n, h, port)
                     for n, h in THREE]
            accepted = []
            self.send_many(nodes, "probe", 3, accepted)  # each node holds one
            self.assertEqual(len(accepted), 3)
            time.sleep(3)  # the first tries are over; now only probes knock
            start = time.monotonic()
            time.sleep(8)
            knocks = len([x for x in seen if x >= start])
        finally:
            stop.set()
            t.join(5)
            knock.close()
        # probe_interval is 1 s: one prober knocks about 8 times; three would knock about 24
        self.assertGreaterEqual(knocks, 4)
        self.assertLessEqual(knocks, 12, f"{knocks} probes in 8 s: more than one node probes")

    @staticmethod
    def _try_send(s, subject):
        try:
            s.mail("alice@sender.test")
            s.rcpt("u3@fleet.test")
            code, _ = s.data(f"Subject: {subject}\r\n\r\nx\r\n")
            if code != 250:
                s.rset()
            return code
        except smtplib.SMTPException:
            s.rset()
            return 0


class Migration(FleetBase):
    def test_store_copy_moves_a_single_node_into_the_fleet(self):
        pg = PgCluster(self.dir, free_port())
        self.stoppers.append(pg.stop)
        pg.start()
        url = pg.url("fleet")
        primary_port = free_port()
        domains = {"mig.test": f"127.0.0.1:{primary_port}",
                   "grey.test": f"127.0.0.1:{primary_port}"}
        one = self.backupmx(domains, extra_queue=SLOW_ONE, name="single")
        with open(one.config) as f:
            text = f.read()
        with open(one.config, "w") as f:  # greylisting for grey.test (a bool, not a string)
            f.write(text.replace('name = "grey.test"', 'name = "grey.test"\ngreylisting = true'))
        one.start()
        s = one.smtp()
        for i in range(3):
            s.sendmail("alice@sender.test", [f"u{i}@mig.test"], f"Subject: mig-{i}\r\n\r\nx\r\n")
        s.mail("alice@sender.test")
        self.assertEqual(s.rcpt("bob@grey.test")[0], 451)  # greylisted: a triplet to carry
        s.quit()
        ids = sorted(r["id"] for r in one.queue())
        one.cli("queue", "hold", ids[0])
        one.cli("admin", "add-user", "cust", "--role", "customer", "--domain", "mig.test")
        one.cli("domain", "add", "rt.test", "127.0.0.1:2599", "--recipients", "any")
        one.stop()

        src = f"sqlite:{self.dir}/queue.db"
        r = subprocess.run([BIN, "store", "copy", "--from", src, "--to", url],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("copied 3 messages (0 were there already), 1 greylist entries", r.stdout)
        self.assertIn("1 domains, 1 accounts", r.stdout)
        r = subprocess.run([BIN, "store", "copy", "--from", src, "--to", url],
                           capture_output=True, text=True, timeout=60)
        self.assertIn("copied 0 messages (3 were there already)", r.stdout)  # idempotent

        sink = self.sink(port=primary_port).start()
        node = self.node("n1", "127.0.0.2", primary_port, store=url, domains=domains)
        wait_until(lambda: {"mig-1", "mig-2"} <= sink.subjects(), timeout=30,
                   what="the copied queue delivered by the fleet node")
        self.assertNotIn("mig-0", sink.subjects())  # still held, as it was
        self.assertEqual(pg.sql(f"SELECT held <> '' FROM messages WHERE id = '{ids[0]}'",
                                "fleet"), "t")
        self.assertEqual(pg.sql("SELECT count(*) FROM greylist", "fleet"), "1")
        self.assertEqual(pg.sql("SELECT domain FROM account_domains WHERE name = 'cust'",
                                "fleet"), "mig.test")
        s = node.smtp()
        s.mail("alice@sender.test")
        self.assertEqual(s.rcpt("x@rt.test")[0], 250)  # the run-time domain came along
        s.quit()
        r = subprocess.run([BIN, "store", "migrate", "--config", node.config],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("schema up to date", r.stdout)


class Failover(FleetBase):
    def test_database_primary_killed_standby_promoted_nothing_lost(self):
        p1, p2 = free_port(), free_port()
        db1 = PgCluster(self.dir, p1, "db1")
        self.stoppers.append(db1.stop)
        db1.start()
        db1.url("backupmx")
        db2 = db1.standby(self.dir, p2, "db2")
        self.stoppers.append(db2.stop)
        db2.start()
        wait_until(lambda: db1.sql("SELECT sync_state FROM pg_stat_replication") == "sync",
                   what="a synchronous standby")
        url = (f"postgresql://postgres@127.0.0.1:{p1},127.0.0.1:{p2}/backupmx"
               "?target_session_attrs=read-write&connect_timeout=3")
        primary_port = free_port()
        nodes = [self.node(n, h, primary_port, store=url)
                 for n, h in (("a", "127.0.0.2"), ("b", "127.0.0.3"))]
        accepted, stop = [], threading.Event()
        # (until stopped: 2,000 is more than it sends in the time allowed)
        sender = threading.Thread(target=self.send_many, args=(nodes, "f", 2000, accepted, stop))
        sender.start()
        wait_until(lambda: len(accepted) >= 40, what="mail accepted")
        db1.kill9()  # the database primary dies under load
        t0, before = time.monotonic(), len(accepted)
        db2.promote()
        wait_until(lambda: len(accepted) >= before + 40, timeout=60,
                   what="mail accepted after failover")
        print(f"40 more accepted {time.monotonic() - t0:.1f} s after the kill", file=sys.stderr)
        stop.set()
        sender.join(60)
        sink = self.sink(port=primary_port).start()
        wait_until(lambda: set(accepted) <= sink.subjects(), timeout=90,
                   what="every accepted message delivered")


if __name__ == "__main__":
    main()
