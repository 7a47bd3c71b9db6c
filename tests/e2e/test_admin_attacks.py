"""The admin listener under attack (issue 14, points 10, 11 and 15), on loopback only, each
attack bounded in time and its figure printed:

- malformed HTTP (a bad version, a negative or conflicting length, ...) is answered 400 and
  logged, escaped, then the connection closed;
- idle and slow connections neither lock the operator out (per-address caps, a header timeout, a
  keep-alive idle timeout, the idlest connection making room at the cap) nor stay for ever;
- a flood of bogus logins from many addresses waits on a small bounded pool of Argon2 threads
  (429 and Retry-After past it), and an operator from an address with no failures is served first;
- parallel wrong passwords are counted before they are checked: no more than the limit is ever
  checked, for an account or for an address.

Attackers speak from other loopback addresses (127.0.0.0/8 is all ours), the operator from
127.0.0.1."""
import http.client
import socket
import threading
import time
import urllib.parse

import unittest

from harness import E2ETest, add_user, free_port, main, pg_admin_url

CSRF = "c" * 32  # the login form's token: any value the bmx_login cookie also carries


def login(port, user, password, source="127.0.0.1", timeout=60):
    """One login form POST from `source`: (status, headers in lower case)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0))
    try:
        form = urllib.parse.urlencode({"user": user, "password": password, "csrf": CSRF})
        conn.request("POST", "/login", form,
                     {"Content-Type": "application/x-www-form-urlencoded",
                      "Cookie": f"bmx_login={CSRF}"})
        r = conn.getresponse()
        r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def raw_exchange(port, data, timeout=5.0):
    """Sends bytes, reads until the server closes: (what came back, seconds until the close)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    start = time.monotonic()
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out, time.monotonic() - start
    finally:
        s.close()


def is_open(s):
    """Whether the server has not closed this (idle) connection."""
    s.setblocking(False)
    try:
        return s.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


def parallel(n, fn):
    """Runs fn(i) for i in range(n) in n threads started together; their results, in order."""
    results = [None] * n
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as e:  # noqa: BLE001 (a test's figure counts it)
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


class AdminUnderAttack(E2ETest):
    def start(self, admin_extra="", name="", store=None):
        self.aport = free_port()
        self.b = self.backupmx({"conf.test": f"127.0.0.1:{free_port()}"},
                               extra_queue='probe_interval = "1h"', name=name, store=store,
                               hostname=f"mx{name}.test.example")
        with open(self.b.config) as f:
            text = f.read()
        with open(self.b.config, "w") as f:  # [admin] before the [[domain]] tables
            f.write(text.replace("[queue]", f'[admin]\nlisten = ["127.0.0.1:{self.aport}"]\n'
                                 f"{admin_extra}\n[queue]", 1))
        if store is None:
            self.ann_pw = add_user(self.b, "ann", "operator")
        self.b.start()
        return self.b


class MalformedHttp(AdminUnderAttack):
    CASES = [
        ("a version that is not HTTP/1.x", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        ("a version that is no version", b"GET / HTTP/1.x\r\nHost: a\r\n\r\n"),
        ("a version from the future", b"GET /healthz HTTP/1.2\r\nHost: a\r\n\r\n"),
        ("a negative Content-Length",
         b"POST /login HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\nhello"),
        ("Content-Length, then chunked",
         b"POST /login HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("chunked, then Content-Length",
         b"POST /login HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
         b"Content-Length: 5\r\n\r\n0\r\n\r\n"),
        ("two Content-Lengths",
         b"POST /login HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
         b"hello!"),
        ("a bad chunk size",
         b"POST /login HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        ("a control byte in a field name",
         b"GET / HTTP/1.1\r\nHost: a\r\nX-\x1b[31mEvil: 1\r\n\r\n"),
        ("an escape sequence and a bare CR in the request line",
         b"GET /\x1b[2J\r HTTP/1.1\r\nHost: a\r\n\r\n"),
    ]

    def test_each_malformed_request_is_answered_400_logged_escaped_and_closed(self):
        self.start()
        answered = 0
        for what, data in self.CASES:
            out, took = raw_exchange(self.aport, data)
            status = out.split(b"\r\n", 1)[0]
            self.assertTrue(status.startswith(b"HTTP/1.1 400 "), f"{what}: {out[:200]!r}")
            self.assertIn(b"Connection: close", out, what)
            self.assertLess(took, 4.0, f"{what}: closed only after {took:.1f} s")
            answered += 1
        # one line each, naming the peer and the parse error; no raw client byte in the log
        self.b.wait_log(r"admin: bad request from 127\.0\.0\.1: .* \(answered 400\)",
                        count=len(self.CASES))
        with open(self.b.log_path, "rb") as f:
            log = f.read()
        lines = [line for line in log.split(b"\n") if b"admin: bad request" in line]
        self.assertEqual(len(lines), len(self.CASES))
        for bad in (b"\x1b", b"\r", b"[2J", b"Evil"):
            self.assertNotIn(bad, log, f"a client's bytes reached the log: {bad!r}")
        # and the listener still serves
        out, _ = raw_exchange(self.aport, b"GET /healthz HTTP/1.1\r\nHost: a\r\n"
                              b"Connection: close\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out[:100])
        print(f"\n  {len(self.CASES)} malformed requests: {answered} answered 400 and closed, "
              f"{len(lines)} logged, 0 raw client bytes in the log")


class IdleConnections(AdminUnderAttack):
    def test_idle_connections_from_many_addresses_do_not_lock_the_operator_out(self):
        self.start()
        figures = []
        # 300 connections (more than max_connections = 256) from 20 addresses, 15 each (under
        # max_connections_per_address = 16): first silent ones, then ones that sent half a header
        for kind, first_bytes in (("silent", b""), ("half-sent", b"GET /healthz HTTP/1.1\r\nHo")):
            held = []
            for a in range(20):
                for _ in range(15):
                    s = socket.create_connection(("127.0.0.1", self.aport), timeout=5,
                                                 source_address=(f"127.0.1.{a + 1}", 0))
                    if first_bytes:
                        s.sendall(first_bytes)
                    held.append(s)
            time.sleep(0.3)
            start = time.monotonic()
            status, _ = login(self.aport, "ann", self.ann_pw, timeout=10)
            took_ms = (time.monotonic() - start) * 1000
            still = sum(is_open(s) for s in held)
            for s in held:
                s.close()
            self.assertEqual(status, 303, kind)
            self.assertLess(took_ms, 2000, kind)
            self.assertGreaterEqual(still, 200, f"the {kind} connections were all dropped")
            figures.append(f"300 {kind} connections from 20 addresses ({still} still held), "
                           f"operator login served in {took_ms:.0f} ms")
            time.sleep(0.5)  # the server sees them go
        print("\n  " + "; ".join(figures))

    def test_one_address_gets_max_connections_per_address(self):
        self.start("max_connections_per_address = 8")
        socks = [socket.create_connection(("127.0.0.1", self.aport), timeout=5,
                                          source_address=("127.0.2.1", 0)) for _ in range(12)]
        time.sleep(0.5)
        refused = []
        for s in socks[8:]:
            s.settimeout(3)
            data = b""
            try:
                while chunk := s.recv(4096):
                    data += chunk
            except (ConnectionResetError, socket.timeout):
                pass
            refused.append(data)
        held = sum(is_open(s) for s in socks[:8])
        self.assertEqual(held, 8)
        self.assertTrue(all(r.startswith(b"HTTP/1.1 503 ") for r in refused), refused)
        # another address is served
        self.assertEqual(login(self.aport, "ann", self.ann_pw)[0], 303)
        self.b.wait_log(r"max_connections_per_address")
        for s in socks:
            s.close()
        print(f"\n  12 connections from one address: {held} held, {len(refused)} answered 503 "
              f"(max_connections_per_address = 8)")

    def test_silent_slow_and_kept_alive_connections_are_closed_in_time(self):
        self.start('header_timeout = "2s"\nidle_timeout = "3s"')
        # silent: never a byte
        silent = socket.create_connection(("127.0.0.1", self.aport), timeout=10)
        # slow: a header one byte every 0.4 s (each byte would renew a per-read timer)
        slow = socket.create_connection(("127.0.0.1", self.aport), timeout=10)
        # kept alive: one request, then quiet
        kept = socket.create_connection(("127.0.0.1", self.aport), timeout=10)
        start = time.monotonic()
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(kept.recv(4096).startswith(b"HTTP/1.1 200 "))
        kept_start = time.monotonic()
        closed = {}
        header = b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"x" * 100
        i = 0
        while len(closed) < 3 and time.monotonic() - start < 12:
            if "slow" not in closed:
                try:
                    slow.send(header[i:i + 1])
                    i += 1
                except OSError:
                    closed["slow"] = time.monotonic() - start
            for name, s, since in (("silent", silent, start), ("slow", slow, start),
                                   ("kept", kept, kept_start)):
                if name not in closed and not is_open(s):
                    closed[name] = time.monotonic() - since
            time.sleep(0.4)
        for s in (silent, slow, kept):
            s.close()
        self.assertEqual(set(closed), {"silent", "slow", "kept"}, closed)
        self.assertLess(closed["silent"], 3.5)
        self.assertLess(closed["slow"], 3.5)
        self.assertGreater(closed["kept"], 2.5)  # idle_timeout, not header_timeout
        self.assertLess(closed["kept"], 4.5)
        print(f"\n  header_timeout 2s: silent closed after {closed['silent']:.1f} s, "
              f"one byte per 0.4 s after {closed['slow']:.1f} s; idle_timeout 3s: kept-alive "
              f"closed after {closed['kept']:.1f} s")


class LoginFlood(AdminUnderAttack):
    def test_operator_is_served_first_under_a_flood_of_bogus_logins(self):
        self.start()
        addresses = [f"127.0.3.{a + 1}" for a in range(40)]
        # Each attacking address has failed once already (it is no operator's desk).
        warm = parallel(40, lambda i: login(self.aport, f"warm{i}", "guess",
                                            source=addresses[i])[0])
        self.assertTrue(all(s in (401, 429) for s in warm), warm)
        for i, s in enumerate(warm):  # those the queue turned away try again, one at a time
            while s == 429:
                time.sleep(0.2)
                s = login(self.aport, f"warm{i}", "guess", source=addresses[i])[0]
        # 160 bogus logins at once: 4 from each address (its 4 tries left), each for another user
        results = {}
        op = {}

        def operator():
            time.sleep(0.5)  # the flood is in
            start = time.monotonic()
            op["status"] = login(self.aport, "ann", self.ann_pw)[0]
            op["ms"] = (time.monotonic() - start) * 1000

        t = threading.Thread(target=operator)
        t.start()
        start = time.monotonic()
        flood = parallel(160, lambda i: login(self.aport, f"bogus{i}", "guess",
                                              source=addresses[i % 40]))
        flood_s = time.monotonic() - start
        t.join(60)
        for r in flood:
            self.assertIsInstance(r, tuple, r)
            results.setdefault(r[0], []).append(r[1])
        checked = len(results.get(401, []))
        busy = results.get(429, [])
        self.assertEqual(set(results) - {401, 429}, set(), results.keys())
        self.assertTrue(all(h.get("retry-after") for h in busy), "429 without Retry-After")
        self.assertGreater(len(busy), 0, "the queue bounded nothing")
        self.assertEqual(op.get("status"), 303)
        self.assertLess(op["ms"], 1500)
        print(f"\n  160 concurrent bogus logins from 40 addresses: {checked} checked, "
              f"{len(busy)} answered 429 with Retry-After, all in {flood_s:.1f} s; "
              f"operator login served in {op['ms']:.0f} ms")


class LoginLimit(AdminUnderAttack):
    def test_parallel_wrong_passwords_for_one_account_are_checked_at_most_five_times(self):
        self.start()
        start = time.monotonic()
        statuses = parallel(40, lambda i: login(self.aport, "ann", f"guess{i}",
                                                source=f"127.0.4.{i + 1}")[0])
        took = time.monotonic() - start
        checked = statuses.count(401)
        self.assertEqual(checked + statuses.count(429), 40, statuses)
        self.assertEqual(checked, 5)
        time.sleep(0.3)
        # the right password, 0.3 s later, from yet another address: refused unchecked
        right, _ = login(self.aport, "ann", self.ann_pw, source="127.0.4.100")
        self.assertEqual(right, 429)
        print(f"\n  40 parallel wrong passwords for one account from 40 addresses: exactly "
              f"{checked} checked, {statuses.count(429)} refused ({took:.1f} s); the right one "
              f"0.3 s later: {right}")

    def test_parallel_wrong_passwords_from_one_address_are_checked_at_most_five_times(self):
        # caps wide enough that only the store's count can hold the 40 back
        self.start("max_connections_per_address = 64\nlogin_queue = 64\n"
                   "login_queue_per_address = 64")
        statuses = parallel(40, lambda i: login(self.aport, f"user{i}", "guess",
                                                source="127.0.5.1")[0])
        checked = statuses.count(401)
        self.assertEqual(checked + statuses.count(429), 40, statuses)
        self.assertEqual(checked, 5)
        self.assertEqual(login(self.aport, "ann", self.ann_pw, source="127.0.5.1")[0], 429)
        # another address is not held to this one's failures
        self.assertEqual(login(self.aport, "ann", self.ann_pw, source="127.0.5.2")[0], 303)
        print(f"\n  40 parallel wrong passwords from one address (40 accounts): exactly {checked} "
              f"checked, {statuses.count(429)} refused; the right one then: 429")


@unittest.skipUnless(pg_admin_url(), "a fleet needs PostgreSQL (BMX_E2E_PG_FILE)")
class FleetLoginLimit(AdminUnderAttack):
    def test_parallel_wrong_passwords_on_two_nodes_are_checked_at_most_five_times(self):
        one = self.start(name="a")
        port_a = self.aport
        self.start(name="b", store=one.store)  # a second node on the same database
        ports = [port_a, self.aport]
        statuses = parallel(40, lambda i: login(ports[i % 2], "ann", f"guess{i}",
                                                source=f"127.0.6.{i + 1}")[0])
        checked = statuses.count(401)
        self.assertEqual(checked + statuses.count(429), 40, statuses)
        self.assertEqual(checked, 5)
        # the right password, on either node: refused unchecked
        right = [login(p, "ann", self.ann_pw, source="127.0.6.100")[0] for p in ports]
        self.assertEqual(right, [429, 429])
        print(f"\n  40 parallel wrong passwords for one account on two nodes of one PostgreSQL: "
              f"exactly {checked} checked; the right one then: {right}")


if __name__ == "__main__":
    main()
