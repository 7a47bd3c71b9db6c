"""The web panel in a real browser: an operator adds a domain and sees the MX record to publish,
watches mail pile up while the primary is down, flushes it once the primary is back; a customer
sees its own domain and nothing else; an operator finds single messages with the filters, opens
one (envelope, recipients, headers, history), holds, releases, bounces and deletes. Debian's chromium, driven by tests/browser/panel.mjs
(playwright-core) over stdin/stdout; screenshots of every page go to $BMX_ARTEFACTS or
build/artefacts/panel/ and are kept. Without node, chromium or playwright-core the test fails,
it does not skip.
"""
import http.cookiejar
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request

from dnsserver import DnsServer
from harness import AdminClient, E2ETest, ScriptedPrimary, free_port, main, port_open, wait_until

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DRIVER = os.path.join(ROOT, "tests", "browser", "panel.mjs")
CHROMIUM = "/usr/bin/chromium"
ME = "mx2.provider.test"
# Only the panel's Flush starts delivery: no probe or retry comes in the test's time.
SLOW = 'probe_interval = "1h"\nretry_min = "1h"\nretry_max = "2h"'


def artefact_dir():
    d = os.environ.get("BMX_ARTEFACTS") or os.path.join(ROOT, "build", "artefacts", "panel")
    os.makedirs(d, exist_ok=True)
    return d


class Panel:
    """panel.mjs as a child process: one JSON command a line in, one JSON result a line out."""

    def __init__(self, base, artefacts, log_path):
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            ["node", DRIVER, "--base", base, "--artefacts", artefacts], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            start_new_session=True)  # its own process group: chromium goes with it in stop()
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._next(60, "the browser to start")
        assert ready.get("ready"), f"panel.mjs did not start: {ready}"

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _next(self, timeout, what):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"panel.mjs gave no answer in {timeout}s for {what}")
        if line is None:
            raise AssertionError(f"panel.mjs exited ({self.proc.wait(5)}) during {what}: see "
                                 "panel.log")
        return json.loads(line)

    def cmd(self, command, /, *, timeout=60, **args):
        """Sends one command; returns its result (a dict with "ok"), whatever it says."""
        self.proc.stdin.write((json.dumps({"cmd": command, **args}) + "\n").encode())
        self.proc.stdin.flush()
        return self._next(timeout, command)

    def do(self, command, /, **args):
        """Sends one command that must succeed; returns its result."""
        r = self.cmd(command, **args)
        assert r.get("ok"), f"panel {command} {args}: {r}"
        return r

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.cmd("quit", timeout=15)
                self.proc.wait(15)
            except (AssertionError, OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left of this driver's group (a chromium that outlived node)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.log):
            try:
                f.close()
            except OSError:
                pass


class Session:
    """The admin API from Python, signed in like a browser (cookies, form login, CSRF header)."""

    def __init__(self, base, user, password):
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        page = self.opener.open(base + "/login", timeout=15).read().decode()
        csrf = re.search(r'name="csrf" value="([^"]*)"', page).group(1)
        form = urllib.parse.urlencode({"user": user, "password": password, "csrf": csrf})
        r = self.opener.open(base + "/login", data=form.encode(), timeout=15)
        assert urllib.parse.urlsplit(r.geturl()).path == "/", f"login as {user} failed"
        self.csrf = self.call("GET", "/api/v1/me")[1]["csrf"]

    def call(self, method, path, body=None):
        """(status, parsed JSON or None)."""
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("Accept", "application/json")
        if method != "GET":
            req.add_header("Content-Type", "application/json")
            req.add_header("X-CSRF-Token", self.csrf)
        try:
            with self.opener.open(req, timeout=30) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        return status, json.loads(raw) if raw.strip() else None


class PanelTest(E2ETest):
    def setUp(self):
        super().setUp()
        missing = []
        if not shutil.which("node"):
            missing.append("node (Node.js): apt-get install nodejs npm")
        if not os.access(CHROMIUM, os.X_OK):
            missing.append(f"{CHROMIUM}: apt-get install chromium")
        if not os.path.isdir(os.path.join(ROOT, "tests", "browser", "node_modules",
                                          "playwright-core")):
            missing.append("playwright-core: (cd tests/browser && npm ci)")
        if missing:
            self.fail("the browser test needs " + "; ".join(missing)
                      + " (scripts/install-deps.sh installs them all)")
        self.artefacts = artefact_dir()
        self.admin_port = free_port()
        self.base = f"http://127.0.0.1:{self.admin_port}"
        self.primary_port = free_port()  # nothing listens here until the test starts the sink
        # shop.test's MX set does not name this backup yet: the DNS check must say what to fix.
        self.dns = DnsServer(self.dir, records=[
            "shop.test. 300 IN MX 10 mail.shop.test.", "mail.shop.test. 300 IN A 127.0.0.1",
            "shop.test. 300 IN NS ns1.shop.test.", "shop.test. 300 IN NS ns2.shop.test.",
            "ns1.shop.test. 300 IN A 127.0.5.1", "ns2.shop.test. 300 IN A 127.0.6.1",
            "cust.test. 300 IN MX 10 mail.cust.test.", f"cust.test. 300 IN MX 20 {ME}.",
            "mail.cust.test. 300 IN A 127.0.0.1", f"{ME}. 300 IN A 127.0.0.1"]).start()
        self.stoppers.append(self.dns.stop)
        self.b = self.backupmx({}, hostname=ME, extra_queue=SLOW, extra_toml="\n".join([
            "[admin]", f'listen = ["127.0.0.1:{self.admin_port}"]',
            "[dns]", f'resolver = "{self.dns.address}"', 'timeout = "3s"',
            "[policy]", "spf = false"]))
        self.b.start()
        wait_until(lambda: port_open(self.admin_port), what="the admin listener")

    def user(self, name, *args):
        """Creates an account with the CLI; returns its password."""
        out = self.b.cli("admin", "add-user", name, *args).stdout.strip().splitlines()
        self.assertTrue(out and out[-1].startswith("password: "), out)
        return out[-1][len("password: "):].strip()

    def browser(self):
        p = Panel(self.base, self.artefacts, os.path.join(self.dir, "panel.log"))
        self.stoppers.append(p.stop)
        return p

    def shot(self, panel, name, **kw):
        path = panel.do("screenshot", name=name, **kw)["path"]
        self.assertGreater(os.path.getsize(path), 1000, path)

    def assert_no_horizontal_scroll(self, panel, page):
        m = panel.do("metrics")
        self.assertLessEqual(m["scrollWidth"], m["innerWidth"],
                             f"{page} scrolls sideways at {m['innerWidth']} px: {m}")

    def assert_clean(self, panel):
        e = panel.do("errors")
        self.assertEqual(e["page_errors"], [], "JavaScript errors in the panel")
        self.assertEqual(e["console"], [], "console errors in the panel")
        self.assertEqual(e["external"], [], "the panel tried to load something from elsewhere")

    def test_operator_adds_a_domain_and_flushes_its_queue(self):
        password = self.user("ann", "--role", "operator")
        panel = self.browser()

        r = panel.do("open_login")
        self.assertEqual(r["error"], "")
        self.shot(panel, "01-login")
        bad = panel.cmd("login", user="ann", password="not-" + password)
        self.assertFalse(bad["ok"], bad)
        self.assertTrue(bad["error"], "a wrong password must show an error on the login page")
        r = panel.do("login", user="ann", password=password)
        self.assertEqual((r["user"], r["role"]), ("ann", "operator"))
        self.assertEqual(panel.do("dashboard_domains")["domains"], [])

        # The add page: the server's error for a bad name, then shop.test with its MX record.
        bad = panel.cmd("add_domain", name="bad..name", primary="127.0.0.1")
        self.assertFalse(bad["ok"], bad)
        self.assertTrue(bad["error"], "a 400 must show the server's error in #form-error")
        primary = f"127.0.0.1:{self.primary_port}"
        r = panel.do("add_domain", name="shop.test", primary=primary)
        self.assertRegex(r["mx_record"],
                         rf"^shop\.test\.\s+\d+\s+IN\s+MX\s+\d+\s+{re.escape(ME)}\.$")
        checks = r["dns_check"]["checks"]
        self.assertTrue(checks, f"no DNS check shown: {r}")
        self.assertTrue(all(c["level"] in ("ok", "warning", "error") for c in checks), checks)
        self.assertIn("error", {c["level"] for c in checks},
                      "shop.test's MX set does not list this backup: the check must say so")
        copied = panel.do("copy_mx")  # to the clipboard, or selected for Ctrl+C without one
        self.assertIn(r["mx_record"], (copied["clipboard"], copied["selected"]), copied)
        self.shot(panel, "02-add-domain-mx-record")
        dup = panel.cmd("add_domain", name="shop.test", primary=primary)
        self.assertFalse(dup["ok"], "adding shop.test twice must show the 409's error")

        self.assertEqual(panel.do("dashboard_domains")["domains"], ["shop.test"])
        self.shot(panel, "03-dashboard")

        # A domain added here asks the primary about each recipient (no backscatter): no
        # warning. An operator who opens it to any address sees the warning on its page.
        r = panel.do("domain", domain="shop.test")
        self.assertIsNone(r["recipients_warning"], r)
        api = AdminClient(self.admin_port)
        self.assertEqual(api.login("ann", password), 303)
        self.assertEqual(api.api("PATCH", "/api/v1/domains/shop.test",
                                 {"recipients": "any"})[0], 200)
        r = panel.do("domain", domain="shop.test")
        self.assertIn("backscatter", r["recipients_warning"] or "", r)

        # Mail for shop.test while its primary is down: the open domain page picks it up by
        # itself (its periodic refresh, no reload).
        r = panel.do("domain", domain="shop.test")
        self.assertEqual(r["state"], "ready")
        self.assertEqual(r["queue_count"], 0)
        s = self.b.smtp()
        s.sendmail("alice@sender.test", ["bob@shop.test"],
                   "From: alice@sender.test\r\nTo: bob@shop.test\r\nSubject: panel story\r\n\r\n"
                   "held while the primary is down\r\n")
        s.quit()
        r = panel.do("wait_queue_count", domain="shop.test", count=1, timeout_ms=15000)
        self.assertEqual(r["queue_count"], 1)
        msg = r["messages"][0]["cells"]
        self.assertEqual(msg["sender"], "alice@sender.test")
        self.assertIn("bob@shop.test", msg["recipients"])
        # Its primary was probed when the domain was added: down, next probe in an hour.
        r = wait_until(lambda: (lambda f: f if f["primary_state"] == "down" else None)(
            panel.do("domain", domain="shop.test")), timeout=15, interval=1,
            what="the panel to show the primary down")
        self.assertEqual(r["queue_count"], 1)
        self.shot(panel, "04-domain-queued")

        # Deleting the domain is refused while mail is queued; the page says why.
        r = panel.do("delete_domain", domain="shop.test")
        self.assertFalse(r["deleted"], r)
        self.assertIn("queued", r["error"])
        self.assertTrue(r["dialog"], "deleting a domain must ask first")

        # The primary comes back; Flush sends the message there and the page empties.
        sink = self.sink(port=self.primary_port).start()
        r = panel.do("flush", domain="shop.test")
        self.assertTrue(r["status"], r)
        r = None
        for _ in range(3):  # the panel refreshes itself every 5 s: each wait is bounded
            r = panel.cmd("wait_queue_count", domain="shop.test", count=0, timeout_ms=15000)
            if r["ok"]:
                break
        self.assertTrue(r["ok"], f"the panel still shows queued mail after the flush: {r}")
        got = wait_until(lambda: sink.messages(), timeout=20, what="the message at the primary")
        self.assertEqual(got[0]["recipients"], ["bob@shop.test"])
        self.assertIn(b"held while the primary is down", got[0]["content"])
        wait_until(lambda: self.b.queue() == [], what="an empty queue")
        self.shot(panel, "05-domain-after-flush")

        # A phone: nothing scrolls sideways.
        panel.do("viewport", width=375, height=800)
        self.assertEqual(panel.do("dashboard_domains")["domains"], ["shop.test"])
        self.assert_no_horizontal_scroll(panel, "the dashboard")
        self.shot(panel, "06-dashboard-phone")
        panel.do("domain", domain="shop.test")
        self.assert_no_horizontal_scroll(panel, "the domain page")
        self.shot(panel, "07-domain-phone")
        panel.do("goto", hash="#/add")
        self.assert_no_horizontal_scroll(panel, "the add page")
        self.shot(panel, "08-add-phone")
        panel.do("viewport", width=1400, height=900)

        self.assert_clean(panel)
        self.assertTrue(panel.do("logout")["url"].endswith("/login"))
        r = panel.cmd("goto", hash="#/")
        self.assertFalse(r["ok"], "after sign-out the panel must send the browser to /login")

    def test_customer_sees_only_its_own_domains(self):
        password = self.user("ann", "--role", "operator")
        op = Session(self.base, "ann", password)
        for name in ("cust.test", "shop.test"):
            status, body = op.call("POST", "/api/v1/domains",
                                   {"name": name, "primary": f"127.0.0.1:{self.primary_port}"})
            self.assertEqual(status, 201, body)
        cust_password = self.user("carl", "--role", "customer", "--domain", "cust.test")

        panel = self.browser()
        r = panel.do("login", user="carl", password=cust_password)
        self.assertEqual((r["user"], r["role"]), ("carl", "customer"))
        self.assertEqual(panel.do("dashboard_domains")["domains"], ["cust.test"])
        self.shot(panel, "10-customer-dashboard")
        r = panel.do("domain", domain="cust.test")
        self.assertEqual(r["state"], "ready")
        r = panel.do("domain", domain="shop.test")
        self.assertEqual(r["state"], "notfound", r)
        self.assertIn("Not found", r["not_found"])
        self.shot(panel, "11-customer-other-domain-not-found")
        # The API itself answers 404 (not 403): another customer's domain cannot be probed.
        cust = Session(self.base, "carl", cust_password)
        self.assertEqual(cust.call("GET", "/api/v1/domains/shop.test")[0], 404)
        self.assertEqual(cust.call("GET", "/api/v1/domains/nonexistent.test")[0], 404)
        self.assert_clean(panel)

    def test_operator_finds_holds_bounces_and_deletes_messages(self):
        password = self.user("ann", "--role", "operator")
        op = Session(self.base, "ann", password)
        status, body = op.call("POST", "/api/v1/domains",
                               {"name": "shop.test", "primary": f"127.0.0.1:{self.primary_port}",
                                "recipients": "any"})  # (its primary is down: nothing to ask)
        self.assertEqual(status, 201, body)

        # Three messages while the primary is down; a long header line must wrap in the view.
        long_ref = "<" + "r" * 300 + "@sender.test>"
        mails = [("alice@sender.test", ["bob@shop.test"], "invoice 2041"),
                 ("carol@other.test", ["dave@shop.test", "erin@shop.test"], "meeting notes"),
                 ("frank@third.test", ["bob@shop.test"], "newsletter")]
        s = self.b.smtp()
        for sender, rcpts, subject in mails:
            s.sendmail(sender, rcpts,
                       f"From: {sender}\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
                       f"References: {long_ref}\r\n\r\nthe body of {subject}\r\n")
        s.quit()
        listed = wait_until(lambda: (lambda q: q if len(q) == 3 else None)(
            op.call("GET", "/api/v1/queue?domain=shop.test")[1]["messages"]),
            what="three messages queued for shop.test")
        ids = {m["sender"]: m["id"] for m in listed}
        a, b, c = (ids[m[0]] for m in mails)
        self.assertEqual(sorted(ids.values()), [m["id"] for m in listed])
        # A delivery history to show: the primary comes back for a moment, takes dave's copy
        # and defers the rest (a flush brings its probe forward), then is down again (a flush:
        # connection refused). Nothing is attempted while it is known down.
        def attempts(n):
            return lambda: all(m["attempts"] >= n for m in op.call(
                "GET", "/api/v1/queue?domain=shop.test")[1]["messages"])
        busy = ScriptedPrimary(port=self.primary_port, answer=lambda rcpt: "250 2.1.5 Ok"
                               if rcpt == "dave@shop.test" else "451 4.2.0 mailbox busy").start()
        self.assertEqual(op.call("POST", "/api/v1/domains/shop.test/flush")[0], 200)
        wait_until(attempts(1), timeout=15, interval=0.2, what="an attempt at the primary")
        busy.stop()
        self.assertEqual(op.call("POST", "/api/v1/domains/shop.test/flush")[0], 200)
        wait_until(attempts(2), timeout=15, interval=0.2, what="a second attempt")
        wait_until(lambda: op.call("GET", "/api/v1/domains/shop.test")[1]["primary_state"]
                   ["state"] == "down", timeout=15, what="the primary to be down again")

        panel = self.browser()
        panel.do("login", user="ann", password=password)
        r = panel.do("wait_queue_count", domain="shop.test", count=3, timeout_ms=15000)
        self.assertEqual(len(r["messages"]), 3)
        calls = panel.do("api_calls")["count"]

        # The filters narrow the list: substrings of the address, any case; state.
        def rows(**f):
            r = panel.do("filter_messages", domain="shop.test", **f)
            return [m["id"] for m in r["messages"]]
        self.assertEqual(rows(sender="alice"), [a])
        self.assertEqual(rows(sender="ALICE@Sender.TEST"), [a])
        self.assertEqual(rows(recipient="bob@"), sorted([a, c]))
        self.assertEqual(rows(recipient="ERIN"), [b])
        self.assertEqual(rows(sender="sender.test", recipient="bob", state="queued"), [a])
        self.assertEqual(rows(state="held"), [])
        self.assertEqual(rows(sender="nobody"), [])
        # The periodic refresh keeps them (the inputs and the list).
        self.assertEqual(rows(recipient="bob"), sorted([a, c]))
        r = panel.do("wait_refresh", domain="shop.test", timeout_ms=15000)
        self.assertEqual([m["id"] for m in r["messages"]], sorted([a, c]))
        self.assertEqual(r["filters"], {"sender": "", "recipient": "bob", "state": "all",
                                        "list": "recipient=bob"})
        self.assertEqual(r["queue_count"], 3, "the domain's count is not filtered")
        queue_calls = [x["url"] for x in panel.do("api_calls", since=calls)["calls"]
                       if x["url"].startswith("/api/v1/queue?")]
        for q in ("sender=alice", "sender=ALICE%40Sender.TEST", "recipient=bob%40",
                  "sender=sender.test&recipient=bob&state=queued", "state=held"):
            self.assertTrue(any(q in u for u in queue_calls), f"no queue call with {q}: "
                            f"{queue_calls}")
        self.assertEqual(rows(), sorted([a, b, c]))

        # Opening a message: envelope, recipients with their state, the header block.
        r = panel.do("open_message", domain="shop.test", id=a)["message"]
        self.assertEqual((r["open"], r["id"], r["state"]), (True, a, "queued"), r)
        self.assertEqual(r["sender"], "alice@sender.test")
        self.assertIn("Subject: invoice 2041", r["headers"])
        self.assertIn(long_ref, r["headers"])
        self.assertNotIn("the body of", r["headers"])
        api = op.call("GET", f"/api/v1/messages/{a}")[1]
        self.assertEqual([(x["address"], x["status"], x["last_reply"]) for x in r["recipients"]],
                         [("bob@shop.test", "pending", api["recipients_state"][0]["last_reply"]
                           or "—")])
        for k in ("size", "received", "attempts", "next_attempt", "state"):
            self.assertIn(k, r["facts"], r["facts"])
        self.assertEqual(r["buttons"], ["hold", "bounce", "delete"])
        box = r["headers_box"]
        self.assertEqual((box["tag"], box["whiteSpace"], box["overflowY"]),
                         ("pre", "pre-wrap", "auto"), box)
        self.assertLessEqual(box["scrollWidth"], box["clientWidth"], "long header lines wrap")
        self.assertGreaterEqual(len(api["history"]), 2, api)
        self.assertEqual([x["result"] for x in r["history"]],
                         [x["result"] for x in api["history"]])
        self.assertTrue(any("451" in x["result"] for x in r["history"]), r["history"])
        self.assertTrue(all(x["time"] and x["result"] for x in r["history"]), r["history"])
        self.assertEqual(r["facts"]["attempts"], str(api["attempts"]))
        self.shot(panel, "12-message-view")

        panel.do("viewport", width=375, height=800)
        r = panel.do("open_message", domain="shop.test", id=a)["message"]
        self.assertEqual(r["id"], a)
        self.assert_no_horizontal_scroll(panel, "the domain page with a message open")
        self.assertLessEqual(r["headers_box"]["scrollWidth"], r["headers_box"]["clientWidth"])
        self.shot(panel, "13-message-view-phone", full_page=False)
        panel.do("viewport", width=1400, height=900)

        # Hold, then release: the view, the list and the API agree.
        r = panel.do("message_action", action="hold")
        self.assertEqual(r["error"], "", r)
        self.assertEqual((r["message"]["state"], r["message"]["buttons"]),
                         ("held", ["release", "bounce", "delete"]), r["message"])
        self.assertIn("held by ann", r["message"]["facts"]["state"])
        st = op.call("GET", f"/api/v1/messages/{a}")[1]
        self.assertEqual((st["state"], st["held_reason"]), ("held", "held by ann"))
        self.assertEqual(rows(state="held"), [a])
        self.assertEqual(panel.do("message")["id"], a, "filtering keeps the message open")
        r = panel.do("message_action", action="release")
        self.assertEqual(r["error"], "", r)
        self.assertEqual((r["message"]["state"], r["message"]["buttons"]),
                         ("queued", ["hold", "bounce", "delete"]), r["message"])
        st = op.call("GET", f"/api/v1/messages/{a}")[1]
        self.assertEqual((st["state"], st["held_reason"]), ("queued", ""))
        self.assertEqual(rows(state="held"), [])
        self.assertEqual(rows(), sorted([a, b, c]))

        # Bounce asks first (a DSN goes to the sender); said no, nothing happens.
        r = panel.do("message_action", action="bounce", accept=False)
        self.assertIn("DSN", r["dialog"])
        self.assertIn("alice@sender.test", r["dialog"])
        self.assertEqual(r["message"]["id"], a)
        self.assertEqual(op.call("GET", f"/api/v1/messages/{a}")[0], 200)
        r = panel.do("message_action", action="bounce")
        self.assertEqual(r["error"], "", r)
        self.assertFalse(r["message"]["open"], "the view closes after a bounce")
        self.assertNotIn(a, [m["id"] for m in r["messages"]])
        self.assertIn("bounced", r["status"])
        self.assertEqual(op.call("GET", f"/api/v1/messages/{a}")[0], 404)
        status, q = op.call("GET", "/api/v1/queue?domain=sender.test")
        self.assertEqual(status, 200, q)
        self.assertEqual([(m["sender"], m["recipients"]) for m in q["messages"]],
                         [("", ["alice@sender.test"])], "one DSN to alice, from <>")

        # Delete another one.
        r = panel.do("open_message", domain="shop.test", id=b)["message"]
        self.assertEqual([(x["address"], x["status"]) for x in r["recipients"]],
                         [("dave@shop.test", "delivered"), ("erin@shop.test", "pending")])
        self.assertIn("Subject: meeting notes", r["headers"])
        r = panel.do("message_action", action="delete")
        self.assertEqual(r["error"], "", r)
        self.assertIn("without a bounce", r["dialog"])
        self.assertFalse(r["message"]["open"], "the view closes after a delete")
        self.assertEqual([m["id"] for m in r["messages"]], [c])
        self.assertEqual(op.call("GET", f"/api/v1/messages/{b}")[0], 404)
        self.assertEqual([m["id"] for m in op.call("GET", "/api/v1/queue?domain=shop.test")[1]
                          ["messages"]], [c])
        self.assertEqual(panel.do("wait_queue_count", domain="shop.test", count=1)["rows"], 1)

        # Every state-changing call carried the CSRF header; no body was ever asked for.
        made = panel.do("api_calls")["calls"]
        changes = [x for x in made if x["method"] != "GET"]
        self.assertEqual(sorted({(x["method"], x["url"].rsplit("/", 1)[-1]) for x in changes}),
                         [("DELETE", b), ("POST", "bounce"), ("POST", "hold"),
                          ("POST", "release")])
        self.assertTrue(all(x["csrf"] for x in changes), changes)
        self.assertFalse([x for x in made if "body=" in x["url"]], "the panel asked for a body")
        self.assert_clean(panel)


if __name__ == "__main__":
    main()
