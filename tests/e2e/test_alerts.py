"""Alerts: the operator hears of a primary that goes down (after down_after failed tries), of its
return, and of a queue past its threshold — by webhook (a real HTTP server here) and by email (to
smtp-sink, through a domain whose primary is up; never through the failed one)."""
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import E2ETest, main, wait_until


class Receiver:
    """An HTTP server that records every POSTed JSON document."""

    def __init__(self):
        self.posts = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((self.path, self.headers["Content-Type"], json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self):
        return [p[2]["event"] for p in self.posts]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Alerts(E2ETest):
    def setup_alerts(self, email_domain="ops.test", **alerts):
        self.hook = Receiver()
        self.stoppers.append(self.hook.stop)
        self.primary = self.scripted()  # example.test's primary: down until started
        self.ops = self.sink().start()  # ops.test's primary: where alert mail goes
        lines = ["[log]", 'level = "debug"',  # failed probes are logged at debug
                 "[alerts]", f'webhook = "http://127.0.0.1:{self.hook.port}/hooks/backupmx"',
                 f'email = "oncall@{email_domain}"']
        lines += [f"{k} = {v}" for k, v in alerts.items()]
        self.b = self.backupmx({"example.test": f"127.0.0.1:{self.primary.port}",
                                "ops.test": f"127.0.0.1:{self.ops.port}"},
                               extra_toml="\n".join(lines),
                               extra_queue='probe_interval = "1s"\nretry_min = "1s"\n'
                                           'retry_max = "2s"').start()

    def alert_mails(self):
        return [m for m in self.ops.messages() if b"X-Backupmx-Alert:" in m["content"]]

    PROBE_FAILED = r"probe of primary for example.test failed"

    def probes_failed(self):
        return len(re.findall(self.PROBE_FAILED, self.b.log()))

    def wait_more_failed_probes(self, n):
        """Waits until n more probes of example.test's primary have failed: time for a wrong
        alert to have been raised (and posted: a POST on loopback takes milliseconds)."""
        self.b.wait_log(self.PROBE_FAILED, count=self.probes_failed() + n, timeout=10 + 2 * n)

    def send(self, n=1):
        s = self.b.smtp()
        for i in range(n):
            s.sendmail("alice@sender.test", ["bob@example.test"], f"Subject: {i}\r\n\r\n{i}\r\n")
        s.quit()

    def test_down_after_failed_tries_then_back_up(self):
        self.setup_alerts(down_after=3)
        self.send()
        wait_until(lambda: "primary_down" in self.hook.events(), timeout=20, what="down alert")
        path, ctype, down = self.hook.posts[0]
        self.assertEqual((path, ctype), ("/hooks/backupmx", "application/json"))
        self.assertEqual(down["domain"], "example.test")
        self.assertEqual(down["node"], "mx2.test.example")
        self.assertEqual(down["queued"], 1)
        self.assertIn("refused", down["error"])
        wait_until(lambda: self.alert_mails(), timeout=20, what="down alert mail")
        mail = self.alert_mails()[0]
        self.assertEqual(mail["sender"], "")
        self.assertEqual(mail["recipients"], ["oncall@ops.test"])
        self.assertIn(b"Subject: backupmx: primary for example.test is down", mail["content"])
        self.wait_more_failed_probes(3)  # the outage goes on: tries 4, 5 and 6 fail too
        self.assertEqual(self.hook.events(), ["primary_down"], "one alert per outage")
        self.assertEqual(self.b.log().count("alert primary_down:"), 1)
        self.primary.start()
        wait_until(lambda: "primary_up" in self.hook.events(), timeout=20, what="up alert")
        up = [p[2] for p in self.hook.posts if p[2]["event"] == "primary_up"][0]
        self.assertEqual(up["queued"], 1)
        self.assertGreaterEqual(up["down_seconds"], 1)
        wait_until(lambda: len(self.alert_mails()) == 2, timeout=20, what="up alert mail")
        wait_until(lambda: self.primary.transactions, what="the held message delivered")
        wait_until(lambda: self.b.queue() == [], what="the queue drained")
        time.sleep(1.5)  # past a probe interval with the primary up: no second up (or down)
        self.assertEqual(self.hook.events(), ["primary_down", "primary_up"])
        self.assertEqual(len(self.alert_mails()), 2)

    def test_no_alert_before_down_after_tries(self):
        self.setup_alerts(down_after=1000)
        self.send()
        self.b.wait_log(r"primary for example.test is down")
        self.b.wait_log(r"deferred id=")
        self.wait_more_failed_probes(5)  # past the default down_after (3) and then some
        self.assertEqual(self.hook.posts, [])
        self.assertNotIn("alert primary_down", self.b.log())

    def test_queue_threshold(self):
        self.setup_alerts(down_after=1000, queue_threshold=3)
        self.send(2)
        self.b.wait_log(r"accepted id=", count=2)
        self.wait_more_failed_probes(2)  # the scheduler has had the two for a while
        self.assertNotIn("queue_threshold", self.hook.events())
        self.send(2)
        wait_until(lambda: "queue_threshold" in self.hook.events(), what="queue alert")
        q = [p[2] for p in self.hook.posts if p[2]["event"] == "queue_threshold"][0]
        self.assertEqual((q["domain"], q["threshold"]), ("example.test", 3))
        self.assertIn(q["queued"], (3, 4))  # 4 when the last two were committed together
        self.send(1)
        self.b.wait_log(r"accepted id=", count=5)
        self.wait_more_failed_probes(2)  # a second alert (for 5) would have come by now
        self.assertEqual(self.hook.events().count("queue_threshold"), 1)
        self.assertEqual(self.b.log().count("alert queue_threshold:"), 1)

    def test_alert_mail_never_goes_through_the_failed_primary(self):
        self.setup_alerts(email_domain="example.test", down_after=2)
        self.send()
        wait_until(lambda: "primary_down" in self.hook.events(), timeout=20, what="down alert")
        self.b.wait_log(r"not mailed to oncall@example.test")
        self.wait_more_failed_probes(1)  # (a mail queued anyway would be in the queue by now)
        self.assertEqual(len(self.b.queue()), 1)  # only the message itself, no alert behind it


if __name__ == "__main__":
    main()
