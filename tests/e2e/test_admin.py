"""The operator console's HTTP API (src/admin/API.md), driven as a browser and a script would:
accounts and every refusal, customers kept apart, the audit trail, domains set up with two facts
(live at once, no restart), the queue's views and actions, primaries' state and outage history,
and /metrics checked by Prometheus's own promtool."""
import json
import os
import re
import stat
import subprocess
import time

from harness import (AdminClient, E2ETest, Raw, add_user, free_port, main, store_dump, wait_until)
import pki

SLOW = 'probe_interval = "1h"\nretry_min = "1h"\nretry_max = "2h"'  # nothing moves by itself


class Console(E2ETest):
    def start(self, extra_queue=SLOW, admin_extra="", domains=None, tls_ca=None):
        self.aport = free_port()
        self.down_port = free_port()  # nothing listens here: a primary that is down
        self.b = self.backupmx(
            domains if domains is not None else {"conf.test": f"127.0.0.1:{self.down_port}"},
            extra_queue=extra_queue,
            extra_toml="")
        with open(self.b.config) as f:
            text = f.read()
        with open(self.b.config, "w") as f:  # [admin] before the [[domain]] tables
            f.write(text.replace("[queue]", f'[admin]\nlisten = ["127.0.0.1:{self.aport}"]\n'
                                 f"{admin_extra}\n[queue]", 1))
        self.ann_pw = add_user(self.b, "ann", "operator")
        self.b.start()
        self.ann = AdminClient(self.aport, tls_ca=tls_ca)
        self.assertEqual(self.ann.login("ann", self.ann_pw), 303)
        return self.b

    def client(self, user, password):
        c = AdminClient(self.aport)
        self.assertEqual(c.login(user, password), 303)
        return c

    def send(self, rcpt, sender="alice@sender.test", subject="hello", body="hi"):
        s = self.b.smtp()
        s.sendmail(sender, [rcpt], f"Subject: {subject}\r\n\r\n{body}\r\n")
        s.quit()

    def rcpt_reply(self, rcpt):
        s = self.b.smtp()
        s.mail("alice@sender.test")
        code, _ = s.rcpt(rcpt)
        s.quit()
        return code

    def queued(self, client, domain):
        status, q = client.api("GET", f"/api/v1/queue?domain={domain}")
        self.assertEqual(status, 200)
        return q["messages"]

    def assert_no_secrets_logged(self, *secrets):
        log = self.b.log()
        for s in secrets:
            self.assertTrue(s and s not in log, f"a secret reached the log: {s[:6]}...")


class Access(Console):
    def test_nothing_is_served_without_authentication(self):
        self.start()
        anon = AdminClient(self.aport)
        self.assertEqual(anon.request("GET", "/healthz")[:3:2], (200, "ok\n"))
        status, _, page, _ = anon.request("GET", "/login")
        self.assertEqual(status, 200)
        self.assertIn('name="password"', page)
        status, headers, _, _ = anon.request("GET", "/")
        self.assertEqual((status, headers["location"]), (303, "/login"))
        for method, path in [("GET", "/api/v1/domains"), ("GET", "/api/v1/queue"),
                             ("GET", "/api/v1/me"), ("GET", "/metrics"),
                             ("POST", "/api/v1/domains"), ("GET", "/api/v1/audit"),
                             ("DELETE", "/api/v1/messages/0123456789ABCDEF")]:
            self.assertEqual(anon.api(method, path)[0], 401, f"{method} {path}")
        # a forged session cookie or a made-up token is nobody
        anon.cookies["bmx_session"] = "forged"
        self.assertEqual(anon.api("GET", "/api/v1/domains")[0], 401)
        anon.cookies.clear()
        anon.token = "bmx_madeup"
        self.assertEqual(anon.api("GET", "/api/v1/domains")[0], 401)
        # the panel's page is not served either: only a redirect to the login page
        anon.token = None
        status, _, body, _ = anon.request("GET", "/index.html")
        self.assertEqual(status, 303)
        self.assertNotIn("<script", body)

    def test_login_session_cookie_csrf_and_logout(self):
        self.start()
        bad = AdminClient(self.aport)
        self.assertEqual(bad.login("ann", "wrong-password"), 401)
        self.assertEqual(bad.login("nobody", "whatever"), 401)
        # a login form posted without the token its page carried is refused
        status, _, _, _ = bad.request("POST", "/login", "user=ann&password=" + self.ann_pw,
                                      {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(status, 403)

        c = AdminClient(self.aport)
        c.request("GET", "/login")
        import urllib.parse
        _, _, page, _ = c.request("GET", "/login")
        csrf = re.search(r'name="csrf" value="([^"]*)"', page).group(1)
        status, headers, _, raw = c.request(
            "POST", "/login", urllib.parse.urlencode(
                {"user": "ann", "password": self.ann_pw, "csrf": csrf}),
            {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(status, 303)
        session_cookie = [v for k, v in raw if k.lower() == "set-cookie" and "bmx_session" in v][0]
        for flag in ("HttpOnly", "SameSite=Strict", "Path=/"):
            self.assertIn(flag, session_cookie)
        status, me = c.api("GET", "/api/v1/me")
        self.assertEqual((status, me["user"], me["role"]), (200, "ann", "operator"))
        c.csrf = me["csrf"]
        status, _, page, _ = c.request("GET", "/")
        self.assertEqual(status, 200)
        self.assertIn("<html", page.lower())

        # state changes need the CSRF header: none, or a wrong one, is refused
        new = {"name": "csrf.test", "primary": "127.0.0.1:25"}
        self.assertEqual(c.api("POST", "/api/v1/domains", new, csrf=False)[0], 403)
        saved, c.csrf = c.csrf, "x" * len(c.csrf)
        self.assertEqual(c.api("POST", "/api/v1/domains", new)[0], 403)
        c.csrf = saved
        self.assertEqual(c.api("GET", "/api/v1/domains/csrf.test")[0], 404)  # nothing happened
        self.assertEqual(c.api("POST", "/api/v1/domains", new)[0], 201)

        status, headers, _, _ = c.request("POST", "/logout", "", {"X-CSRF-Token": c.csrf})
        self.assertEqual(status, 303)
        c.cookies["bmx_session"] = session_cookie.split(";")[0].split("=", 1)[1]
        self.assertEqual(c.api("GET", "/api/v1/domains")[0], 401, "the session outlived logout")
        self.assert_no_secrets_logged(self.ann_pw, c.cookies["bmx_session"], saved, csrf)

    def test_failed_logins_are_rate_limited(self):
        self.start()
        c = AdminClient(self.aport)
        for _ in range(5):
            self.assertEqual(c.login("ann", "guess"), 401)
        # now even the right password is refused, without being checked
        self.assertEqual(c.login("ann", self.ann_pw), 429)
        status, audit = self.ann.api("GET", "/api/v1/audit?limit=20")
        actions = [e["action"] for e in audit["entries"]]
        self.assertEqual(actions.count("login-failed"), 5)
        self.assertIn("login-refused", actions)
        self.assert_no_secrets_logged(self.ann_pw)
        self.assertNotIn("guess", self.b.log())

    def test_api_tokens_created_used_and_revoked(self):
        self.start()
        status, t = self.ann.api("POST", "/api/v1/tokens", {"label": "monitoring"})
        self.assertEqual(status, 201)
        script = AdminClient(self.aport)
        script.token = t["token"]
        self.assertEqual(script.api("GET", "/api/v1/domains")[0], 200)
        # a bearer token needs no CSRF header (no cookie: nothing a browser sends by itself)
        self.assertEqual(script.api("POST", "/api/v1/domains",
                                    {"name": "tok.test", "primary": "127.0.0.1"})[0], 201)
        status, listed = self.ann.api("GET", "/api/v1/tokens")
        self.assertEqual([x["label"] for x in listed["tokens"]], ["monitoring"])
        self.assertNotIn(t["token"], str(listed))
        self.assertEqual(self.ann.api("DELETE", f"/api/v1/tokens/{t['id']}")[0], 204)
        self.assertEqual(script.api("GET", "/api/v1/domains")[0], 401)
        # the store keeps a hash, never the token
        dump = store_dump(self.b)
        self.assertNotIn(t["token"], dump)
        self.assertNotIn(self.ann_pw, dump)
        self.assert_no_secrets_logged(t["token"], self.ann_pw)

    def test_https_when_a_certificate_is_set(self):
        ca = pki.TestCA(self.dir)
        leaf = ca.issue(["localhost"], ip="127.0.0.1")
        self.start(admin_extra=f'tls_cert = "{leaf.chain}"\ntls_key = "{leaf.key}"', tls_ca=ca.cert)
        c = AdminClient(self.aport, tls_ca=ca.cert)
        self.assertEqual(c.login("ann", self.ann_pw), 303)
        self.assertEqual(c.api("GET", "/api/v1/domains")[0], 200)
        _, _, _, raw = c.request("GET", "/login")
        self.assertTrue(any("Secure" in v for k, v in raw if k.lower() == "set-cookie"))
        plain = AdminClient(self.aport)
        with self.assertRaises(Exception):
            plain.request("GET", "/healthz")


class Customers(Console):
    def test_a_customer_sees_and_touches_only_its_own(self):
        self.start(admin_extra="customer_private_primaries = true")
        for name, owner in [("a.test", None), ("b.test", None)]:
            self.assertEqual(self.ann.api("POST", "/api/v1/domains",
                                          {"name": name, "recipients": "any",
                                           "primary": f"127.0.0.1:{self.down_port}"})[0], 201)
        pw1 = add_user(self.b, "cust1", "customer", "a.test")
        pw2 = add_user(self.b, "cust2", "customer", "b.test")
        self.send("x@a.test", subject="for a")
        self.send("y@b.test", subject="for b")
        c1, c2 = self.client("cust1", pw1), self.client("cust2", pw2)
        b_id = self.queued(c2, "b.test")[0]["id"]
        a_id = self.queued(c1, "a.test")[0]["id"]

        status, mine = c1.api("GET", "/api/v1/domains")
        self.assertEqual([d["name"] for d in mine["domains"]], ["a.test"])
        # another's domain answers exactly as one that does not exist
        self.assertEqual(c1.api("GET", "/api/v1/domains/b.test"),
                         c1.api("GET", "/api/v1/domains/nosuch.test"))
        self.assertEqual(c1.api("GET", "/api/v1/domains/b.test")[0], 404)
        self.assertEqual(self.queued(c1, "b.test"), [])
        self.assertEqual([m["id"] for m in c1.api("GET", "/api/v1/queue")[1]["messages"]], [a_id])
        nosuch = "0" * 16
        self.assertEqual(c1.api("GET", f"/api/v1/messages/{b_id}"),
                         c1.api("GET", f"/api/v1/messages/{nosuch}"))
        for method, path, body in [
                ("GET", f"/api/v1/messages/{b_id}", None),
                ("DELETE", f"/api/v1/messages/{b_id}", None),
                ("POST", f"/api/v1/messages/{b_id}/bounce", None),
                ("POST", f"/api/v1/messages/{b_id}/hold", None),
                ("POST", "/api/v1/domains/b.test/flush", None),
                ("PATCH", "/api/v1/domains/b.test", {"primary": "evil.example"}),
                ("DELETE", "/api/v1/domains/b.test", None),
                ("GET", "/api/v1/domains/b.test/dns-check", None)]:
            self.assertEqual(c1.api(method, path, body)[0], 404, f"{method} {path}")
        for path in ("/metrics", "/api/v1/audit"):
            self.assertEqual(c1.api("GET", path)[0], 403, path)
        # nothing of b.test moved
        self.assertEqual([m["id"] for m in self.queued(c2, "b.test")], [b_id])
        self.assertEqual(self.ann.api("GET", "/api/v1/domains/b.test")[1]["primary"],
                         f"127.0.0.1:{self.down_port}")
        # its own it may change, and a domain it adds is its own once approved (a claim until
        # then: test_customer_domains; its loopback primary is allowed by customer_private_primaries)
        self.assertEqual(c1.api("POST", f"/api/v1/messages/{a_id}/hold")[0], 200)
        self.assertEqual(c1.api("POST", "/api/v1/domains",
                                {"name": "c.test", "primary": "127.0.0.1"})[0], 201)
        self.assertEqual(self.ann.api("POST", "/api/v1/domains/c.test/approve")[0], 200)
        names = [d["name"] for d in c1.api("GET", "/api/v1/domains")[1]["domains"]]
        self.assertEqual(names, ["a.test", "c.test"])
        self.assertEqual(c2.api("GET", "/api/v1/domains/c.test")[0], 404)
        self.assert_no_secrets_logged(pw1, pw2, c1.csrf, c2.csrf, c1.cookies["bmx_session"])


class Domains(Console):
    def test_two_facts_set_a_domain_up_live(self):
        self.start()
        self.assertEqual(self.rcpt_reply("bob@new.test"), 550)  # not ours yet
        status, r = self.ann.api("POST", "/api/v1/domains",
                                 {"name": "New.Test.", "primary": "127.0.0.1:2599"})
        self.assertEqual(status, 201, r)
        self.assertEqual(r["domain"]["name"], "new.test")
        self.assertEqual(r["mx_record"], "new.test. 3600 IN MX 20 mx2.test.example.")
        self.assertIn("checks", r["dns_check"])
        # served at once, no restart: its primary (down here) is asked about each recipient,
        # and while it cannot answer the sender is told to try later (no backscatter)
        self.assertEqual(self.rcpt_reply("bob@new.test"), 450)
        self.assertEqual(r["domain"]["recipients"], "verify")
        self.assertEqual(r["domain"]["warnings"], [])
        self.b.wait_log(r"admin: user=ann action=domain.add target=new.test client=127.0.0.1")

        bad = [({"name": "bücher.test", "primary": "mx.test"}, "A-label"),
               ({"name": "bad_name!", "primary": "mx.test"}, "not a domain"),
               ({"name": "nodot", "primary": "mx.test"}, "not a domain"),
               ({"name": "ok.test", "primary": "mx.test:99999"}, "primary"),
               ({"name": "ok.test", "primary": "::1"}, "primary"),
               ({"name": "ok.test", "primary": "[mx.test]:25"}, "not a host"),
               ({"name": "ok.test"}, "primary"),
               ("not an object", "JSON object")]
        for body, why in bad:
            status, r = self.ann.api("POST", "/api/v1/domains", body)
            self.assertEqual(status, 400, body)
            self.assertIn(why, r["error"], body)
        for ok in ({"name": "xn--bcher-kva.test", "primary": "[::1]:2525"},
                   {"name": "v4.test", "primary": "[127.0.0.1]:2525"}):
            self.assertEqual(self.ann.api("POST", "/api/v1/domains", ok)[0], 201, ok)
        self.assertEqual(self.ann.api("POST", "/api/v1/domains",
                                      {"name": "new.test", "primary": "x.test"})[0], 409)
        self.assertEqual(self.ann.api("POST", "/api/v1/domains",
                                      {"name": "conf.test", "primary": "x.test"})[0], 409)

        status, d = self.ann.api("GET", "/api/v1/domains/new.test")
        self.assertEqual((d["source"], d["readonly"], d["primary"]),
                         ("store", False, "127.0.0.1:2599"))
        status, d = self.ann.api("PATCH", "/api/v1/domains/new.test",
                                 {"primary": "127.0.0.1:2600", "greylisting": True,
                                  "recipients": "any"})  # (its primary stays down)
        self.assertEqual((status, d["domain"]["primary"], d["domain"]["greylisting"]),
                         (200, "127.0.0.1:2600", True))
        self.assertIn("backscatter", d["domain"]["warnings"][0])  # "any" is warned about
        self.assertEqual(self.ann.api("PATCH", "/api/v1/domains/new.test",
                                      {"recipients": "everyone"})[0], 400)
        status, d = self.ann.api("GET", "/api/v1/domains/conf.test")
        self.assertEqual((d["source"], d["readonly"]), ("config", True))
        self.assertEqual(self.ann.api("PATCH", "/api/v1/domains/conf.test",
                                      {"primary": "x.test"})[0], 409)
        self.assertEqual(self.ann.api("DELETE", "/api/v1/domains/conf.test")[0], 409)

        # greylisting is now on for new.test: the switch took effect at once
        self.assertEqual(self.rcpt_reply("bob@new.test"), 451)
        self.ann.api("PATCH", "/api/v1/domains/new.test", {"greylisting": False})
        self.send("bob@new.test")
        status, r = self.ann.api("DELETE", "/api/v1/domains/new.test")
        self.assertEqual(status, 409)
        self.assertIn("1 messages are queued", r["error"])
        self.assertEqual(self.rcpt_reply("bob@new.test"), 250)  # still served
        mid = self.queued(self.ann, "new.test")[0]["id"]
        self.assertEqual(self.ann.api("DELETE", f"/api/v1/messages/{mid}")[0], 204)
        self.assertEqual(self.ann.api("DELETE", "/api/v1/domains/new.test")[0], 204)
        self.assertEqual(self.rcpt_reply("bob@new.test"), 550)

        # run-time domains live in the store: a restart keeps them
        self.b.stop()
        self.b.start()
        self.assertEqual(self.rcpt_reply("bob@v4.test"), 450)  # served (verify; its primary
        self.assertEqual(self.rcpt_reply("bob@new.test"), 550)  # is down), and not served
        # sessions are in the store too: the restart did not log anyone out
        self.assertEqual(self.ann.api("GET", "/api/v1/audit?limit=50")[0], 200)
        actions = [(e["user"], e["action"], e["target"])
                   for e in self.ann.api("GET", "/api/v1/audit?limit=50")[1]["entries"]]
        for a in [("ann", "domain.add", "new.test"), ("ann", "domain.update", "new.test"),
                  ("ann", "message.delete", mid), ("ann", "domain.delete", "new.test")]:
            self.assertIn(a, actions)

    def test_a_domain_limit_set_by_patch_holds_at_mail_and_at_data(self):
        self.start()
        self.ann.api("POST", "/api/v1/domains", {"name": "lim.test", "primary": "127.0.0.1:9",
                                                 "recipients": "any"})  # (its primary is down)
        status, r = self.ann.api("PATCH", "/api/v1/domains/lim.test", {"max_message_size": 2048})
        self.assertEqual((status, r["domain"]["max_message_size"]), (200, 2048))
        for bad in (-1, "big", 10 ** 12):
            self.assertEqual(self.ann.api("PATCH", "/api/v1/domains/lim.test",
                                          {"max_message_size": bad})[0], 400, bad)
        s = self.b.smtp()
        s.mail("alice@sender.test", ["SIZE=2048"])  # at the limit
        self.assertEqual(s.rcpt("bob@lim.test")[0], 250)
        s.rset()
        s.mail("alice@sender.test", ["SIZE=2049"])  # declared too big for lim.test
        code, msg = s.rcpt("bob@lim.test")
        self.assertEqual(code, 552)
        self.assertIn(b"max_message_size = 2048", msg)
        self.assertEqual(s.rcpt("bob@conf.test")[0], 250)  # the global limit is larger
        s.rset()
        s.mail("alice@sender.test")  # not declared: the size is counted during DATA
        self.assertEqual(s.rcpt("bob@lim.test")[0], 250)
        code, msg = s.data(("Subject: big\r\n\r\n" + "y" * 70 + "\r\n") * 40)
        self.assertEqual(code, 552)
        s.mail("alice@sender.test")
        s.rcpt("bob@lim.test")
        self.assertEqual(s.data("Subject: small\r\n\r\nsmall\r\n")[0], 250)
        s.quit()
        self.assertEqual(len(self.queued(self.ann, "lim.test")), 1)

    def test_the_command_line_sets_a_domain_up_too(self):
        self.start()
        r = self.b.cli("domain", "add", "cli.test", "127.0.0.1:2599", "--recipients", "any")
        self.assertIn("cli.test. 3600 IN MX 20 mx2.test.example.", r.stdout)
        wait_until(lambda: self.rcpt_reply("bob@cli.test") == 250, timeout=10,
                   what="the running server to take the new domain")
        self.assertIn("cli.test primary=127.0.0.1:2599 source=store",
                      self.b.cli("domain", "list").stdout)
        self.assertEqual(self.ann.api("GET", "/api/v1/domains/cli.test")[0], 200)
        self.send("bob@cli.test")
        r = self.b.cli("domain", "delete", "cli.test", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("1 messages are queued", r.stderr)
        audit = self.ann.api("GET", "/api/v1/audit")[1]["entries"]
        self.assertTrue(any(e["action"] == "domain.add" and e["user"].startswith("cli:")
                            for e in audit))


class QueueViews(Console):
    def test_summary_list_filters_detail_and_actions(self):
        self.start()
        primary = self.scripted(answer=lambda rcpt: "451 4.3.2 busy, try later")
        primary.start()
        self.ann.api("POST", "/api/v1/domains",
                     {"name": "q.test", "primary": f"127.0.0.1:{primary.port}",
                      "recipients": "any"})  # (its primary answers every RCPT 451)
        self.send("bob@q.test", sender="alice@sender.test", subject="one")
        self.send("dave@q.test", sender="carol@sender.test", subject="two")
        self.send("erin@q.test", sender="alice@sender.test", subject="three",
                  body="x" * 50 + "\r\n" * 100)
        self.b.wait_log(r"deferred id=", count=3)  # each tried once: now they wait an hour

        status, d = self.ann.api("GET", "/api/v1/domains/q.test")
        q = d["queue"]
        self.assertEqual(q["messages"], 3)
        self.assertIsNotNone(q["oldest_age"])
        self.assertIsNotNone(q["next_attempt"])
        self.assertIn("busy", q["last_error"])

        def ids(query):
            status, r = self.ann.api("GET", "/api/v1/queue?domain=q.test&" + query)
            self.assertEqual(status, 200)
            return r
        self.assertEqual(len(ids("sender=ALICE")["messages"]), 2)
        self.assertEqual([m["recipients"] for m in ids("recipient=dave")["messages"]],
                         [["dave@q.test"]])
        self.assertEqual(ids("state=held")["messages"], [])
        self.assertEqual(ids("min_age=3600")["messages"], [])
        page1 = ids("limit=2")
        self.assertEqual(len(page1["messages"]), 2)
        page2 = ids(f"limit=2&after={page1['next']}")
        self.assertEqual(len(page2["messages"]), 1)
        self.assertIsNone(page2["next"])
        all_ids = [m["id"] for m in page1["messages"] + page2["messages"]]
        self.assertEqual(len(set(all_ids)), 3)
        self.assertEqual(q["bytes"], sum(m["size"] for m in page1["messages"] + page2["messages"]))

        one = ids("sender=carol")["messages"][0]["id"]
        status, m = self.ann.api("GET", f"/api/v1/messages/{one}")
        self.assertIn("Subject: two", m["headers"])
        self.assertNotIn("body", m)
        self.assertEqual(m["attempts"], 1)
        self.assertEqual(m["recipients_state"][0]["status"], "pending")
        self.assertEqual(len(m["history"]), 1)
        self.assertIn("dave@q.test deferred: 451 4.3.2 busy", m["history"][0]["result"])
        status, m = self.ann.api("GET", f"/api/v1/messages/{one}?body=1")
        self.assertIn("hi", m["body"])

        # hold / release
        big = ids("recipient=erin")["messages"][0]["id"]
        self.assertEqual(self.ann.api("POST", f"/api/v1/messages/{big}/hold")[0], 200)
        self.assertEqual([x["id"] for x in ids("state=held")["messages"]], [big])
        # bounce: a DSN to the sender is queued, the message is gone
        status, r = self.ann.api("POST", f"/api/v1/messages/{one}/bounce")
        self.assertEqual(status, 200)
        self.assertIsNotNone(r["dsn"])
        self.assertEqual(self.ann.api("GET", f"/api/v1/messages/{one}")[0], 404)
        status, dsn = self.ann.api("GET", f"/api/v1/messages/{r['dsn']}")
        self.assertEqual((status, dsn["domain"], dsn["sender"]), (200, "sender.test", ""))
        self.assertEqual(dsn["recipients"], ["carol@sender.test"])

        # the primary comes back: a flush sends what is queued, not what is held
        primary.answer = lambda rcpt: "250 2.1.5 Ok"
        status, r = self.ann.api("POST", "/api/v1/domains/q.test/flush")
        self.assertEqual((status, r["flushed"]), (200, 1))
        wait_until(lambda: len(primary.transactions) == 1, what="the queued message delivered")
        wait_until(lambda: [m["id"] for m in self.queued(self.ann, "q.test")] == [big],
                   what="only the held message left")
        self.assertEqual(self.ann.api("POST", f"/api/v1/messages/{big}/release")[0], 200)
        wait_until(lambda: len(primary.transactions) == 2, what="the released message delivered")
        wait_until(lambda: self.queued(self.ann, "q.test") == [], what="an empty queue")
        actions = [e["action"] for e in self.ann.api("GET", "/api/v1/audit")[1]["entries"]]
        for a in ("message.hold", "message.release", "message.bounce", "queue.flush"):
            self.assertIn(a, actions)

    def test_primary_state_and_outage_history(self):
        self.start(extra_queue='probe_interval = "1s"\nretry_min = "1s"\nretry_max = "2s"',
                   domains={})
        self.ann.api("POST", "/api/v1/domains",
                     {"name": "o.test", "primary": f"127.0.0.1:{self.down_port}",
                      "recipients": "any"})
        self.send("bob@o.test")
        self.send("carol@o.test")

        def domain():
            return self.ann.api("GET", "/api/v1/domains/o.test")[1]
        d = wait_until(lambda: (lambda d: d if d["outages"] else None)(domain()),
                       what="an outage on record")
        st = d["primary_state"]
        self.assertEqual(st["state"], "down")
        self.assertIsNotNone(st["since"])
        self.assertIn("refused", st["last_result"])
        self.assertIsNone(d["outages"][0]["end"])
        self.sink(port=self.down_port).start()
        d = wait_until(lambda: (lambda d: d if d["outages"][0]["drain_seconds"] is not None
                                else None)(domain()), what="the outage over and drained")
        self.assertEqual(d["primary_state"]["state"], "up")
        self.assertRegex(d["primary_state"]["last_result"], "^(reached|delivered to) ")
        o = d["outages"][0]
        self.assertIsNotNone(o["end"])
        self.assertGreaterEqual(o["end"], o["start"])
        self.assertEqual(o["messages_held"], 2)
        self.assertGreaterEqual(o["drain_seconds"], 0)
        self.assertEqual(d["queue"]["messages"], 0)


class CommandLine(Console):
    def test_queue_summary_show_hold_release_bounce_from_the_shell(self):
        primary = self.scripted(answer=lambda rcpt: "451 4.3.2 busy, try later")
        primary.start()
        self.start(domains={"c.test": f"127.0.0.1:{primary.port}"})
        self.send("bob@c.test", subject="first")
        self.send("carol@c.test", subject="second", sender="dan@sender.test")
        self.b.wait_log(r"deferred id=", count=2)
        out = self.b.cli("queue", "summary").stdout
        self.assertRegex(out, r"c.test messages=2 bytes=\d+ held=0 oldest=\S+ primary up ")
        self.assertIn("busy", out)
        rows = self.b.queue()
        first = [r for r in rows if r["recipients"] == ["bob@c.test"]][0]["id"]
        self.assertEqual(len(json.loads(self.b.cli("queue", "list", "--json", "--domain",
                                                   "c.test").stdout)), 2)
        self.assertEqual(json.loads(self.b.cli("queue", "list", "--json", "--domain",
                                               "x.test").stdout), [])
        show = self.b.cli("queue", "show", first).stdout
        for part in ("from: <alice@sender.test>", "to: <bob@c.test> pending", "Subject: first",
                     "attempt: ", "451 4.3.2 busy"):
            self.assertIn(part, show)
        self.assertNotIn("\r\n\r\nhi", show)  # no body

        self.b.cli("queue", "hold", first)
        self.assertTrue([r for r in self.b.queue() if r["id"] == first][0]["held"])
        primary.answer = lambda rcpt: "250 2.1.5 Ok"
        self.b.cli("queue", "flush", "c.test")
        wait_until(lambda: len(primary.transactions) == 1, what="the unheld one delivered")
        time.sleep(0.5)
        self.assertEqual(len(primary.transactions), 1, "a held message was delivered")
        self.b.cli("queue", "release", first)
        wait_until(lambda: len(primary.transactions) == 2, what="the released one delivered")

        self.send("erin@c.test", subject="third", sender="frank@sender.test")
        wait_until(lambda: len(primary.transactions) == 3, what="the third delivered")
        primary.answer = lambda rcpt: "451 4.3.2 busy again"
        self.send("gina@c.test", subject="fourth", sender="hal@sender.test")
        self.b.wait_log(r"busy again")
        fourth = [r for r in self.b.queue() if r["recipients"] == ["gina@c.test"]][0]["id"]
        out = self.b.cli("queue", "bounce", fourth).stdout
        dsn = re.search(r"dsn (\S+)\)", out).group(1)
        rows = self.b.queue()
        self.assertEqual([r["id"] for r in rows], [dsn])
        self.assertEqual((rows[0]["domain"], rows[0]["recipients"]),
                         ("sender.test", ["hal@sender.test"]))
        entries = self.ann.api("GET", "/api/v1/audit")[1]["entries"]
        acts = {(e["action"], e["target"]) for e in entries if e["user"].startswith("cli:")}
        self.assertLessEqual({("message.hold", first), ("message.release", first),
                              ("message.bounce", fourth)}, acts)


class Metrics(Console):
    def test_promtool_accepts_the_metrics_and_the_values_add_up(self):
        sink_port = free_port()
        self.start(extra_queue="", domains={"m.test": f"127.0.0.1:{sink_port}"})
        sink = self.sink(port=sink_port).start()
        self.send("a@m.test")
        self.send("b@m.test")
        self.assertEqual(self.rcpt_reply("x@elsewhere.test"), 550)  # relay refused
        wait_until(lambda: len(sink.messages()) == 2, what="both delivered")
        status, t = self.ann.api("POST", "/api/v1/tokens", {"label": "prometheus"})
        scraper = AdminClient(self.aport)
        scraper.token = t["token"]

        def scrape():
            status, _, text, _ = scraper.request("GET", "/metrics")
            self.assertEqual(status, 200)
            return text
        wait_until(lambda: 'backupmx_queue_messages{domain="m.test"} 0' in scrape(),
                   what="an empty queue in the metrics")
        text = scrape()
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

        def value(series):
            m = re.search("^" + re.escape(series) + r" (\S+)$", text, re.M)
            self.assertIsNotNone(m, series)
            return float(m.group(1))
        self.assertEqual(value("backupmx_messages_accepted_total"), 2)
        self.assertEqual(value('backupmx_delivery_results_total{result="delivered"}'), 2)
        self.assertEqual(value('backupmx_smtp_rejects_total{reason="relay"}'), 1)
        self.assertEqual(value('backupmx_primary_up{domain="m.test"}'), 1)
        self.assertEqual(value('backupmx_queue_bytes{domain="m.test"}'), 0)
        self.assertEqual(value("backupmx_store_commit_seconds_count"), 2)
        self.assertEqual(value('backupmx_store_commit_messages_bucket{le="+Inf"}'), 2)
        self.assertEqual(value("backupmx_smtp_sessions"), 0)  # every session has ended
        for family in ("backupmx_queue_oldest_age_seconds", "backupmx_delivery_results_total"):
            self.assertIn(f"# TYPE {family} ", text)


    def scraper(self):
        status, t = self.ann.api("POST", "/api/v1/tokens", {"label": "prometheus"})
        self.assertEqual(status, 201, t)
        c = AdminClient(self.aport)
        c.token = t["token"]
        return c

    def values(self, scraper):
        """Every sample of /metrics: {series: value}."""
        status, _, text, _ = scraper.request("GET", "/metrics")
        self.assertEqual(status, 200)
        return {m.group(1): float(m.group(2))
                for m in re.finditer(r"^(\S+) (\S+)$", text, re.M)}

    def test_counters_read_exactly_what_happened(self):
        # 3 accepted (one message each): 2 delivered, 1 deferred; 1 RCPT refused as relaying.
        answers = {"a@m.test": "250 2.1.5 Ok", "b@m.test": "250 2.1.5 Ok",
                   "c@m.test": "451 4.3.0 busy, try later"}
        primary = self.scripted(answer=lambda r: answers[r]).start()
        self.start(domains={"m.test": f"127.0.0.1:{primary.port}"})  # retries an hour later
        scraper = self.scraper()
        before = self.values(scraper)
        self.assertEqual(before.get("backupmx_messages_accepted_total", 0), 0)
        for rcpt in answers:
            self.send(rcpt)
        self.assertEqual(self.rcpt_reply("x@elsewhere.test"), 550)
        self.b.wait_log(r"deferred id=\S+ .*to=<c@m.test>")
        wait_until(lambda: len(re.findall(r"delivered id=", self.b.log())) == 2, what="2 delivered")
        v = self.values(scraper)
        self.assertEqual(v["backupmx_messages_accepted_total"], 3)
        self.assertEqual(v['backupmx_smtp_rejects_total{reason="relay"}'], 1)
        self.assertEqual(sum(x for k, x in v.items()
                             if k.startswith("backupmx_smtp_rejects_total")), 1)  # no other
        self.assertEqual(v['backupmx_delivery_results_total{result="delivered"}'], 2)
        self.assertEqual(v['backupmx_delivery_results_total{result="deferred"}'], 1)
        self.assertEqual(v.get('backupmx_delivery_results_total{result="bounced"}', 0), 0)
        self.assertEqual(v.get('backupmx_delivery_results_total{result="expired"}', 0), 0)
        self.assertEqual(v['backupmx_queue_messages{domain="m.test"}'], 1)  # c@ waits
        self.assertEqual(v["backupmx_store_commit_messages_sum"], 3)  # each message committed

    def test_smtp_sessions_counts_the_open_sessions(self):
        self.start()
        scraper = self.scraper()
        sessions = lambda: self.values(scraper)["backupmx_smtp_sessions"]  # noqa: E731
        self.assertEqual(sessions(), 0)
        one = Raw(self.b.port)
        self.assertTrue(one.reply().startswith("220"))
        self.assertEqual(sessions(), 1)
        two = Raw(self.b.port)
        self.assertTrue(two.reply().startswith("220"))
        self.assertEqual(sessions(), 2)
        one.cmd("QUIT")
        one.close()
        wait_until(lambda: sessions() == 1, timeout=5, what="one session left")
        two.close()  # a client that just hangs up ends its session too
        wait_until(lambda: sessions() == 0, timeout=5, what="no session left")


class ControlSocket(Console):
    def test_control_socket_is_mode_0600(self):
        self.start()
        path = re.search(r"backupmx ready: .* control=(\S+)", self.b.log()).group(1)
        st = os.stat(path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode), oct(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600, oct(st.st_mode))
        self.assertEqual(st.st_uid, os.geteuid())
        self.b.cli("queue", "flush")  # and it is the door the CLI uses


if __name__ == "__main__":
    main()
