"""harness: starts and stops the real daemons the end-to-end stories need.

backupmx itself (built binary from $BACKUPMX_BIN), Postfix's smtp-sink as the primary, swaks and
smtplib as senders, and ScriptedPrimary — a small SMTP server for fault injection that smtp-sink
cannot do (per-recipient answers, raw byte capture, connection counting). Every daemon is started on
a free loopback port inside a temporary directory and stopped by the test, whatever happens.
Nothing here listens beyond 127.0.0.1.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

BIN = os.path.abspath(os.environ.get("BACKUPMX_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "backupmx"))


from ports import free_port, release_all, release_port  # noqa: E402,F401 (tests import them)


def wait_until(pred, timeout=20.0, interval=0.05, what="condition"):
    """Polls pred() until true; bounded in time, raises AssertionError with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pg_admin_url():
    """$BMX_E2E_PG_FILE names a file holding the URL of a PostgreSQL server's admin database:
    then every backupmx of the e2e tests gets a database of its own there instead of SQLite
    (ctest runs the suite once on each engine)."""
    path = os.environ.get("BMX_E2E_PG_FILE")
    if not path:
        return None
    with open(path) as f:
        return f.read().strip()


def pg_store_for(workdir, name):
    """A fresh database for one backupmx of a test; its libpq URL."""
    admin = pg_admin_url()
    db = "e2e_" + re.sub(r"[^a-z0-9]", "_", (os.path.basename(workdir) + name).lower())
    subprocess.run(["psql", admin, "-Atqc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"],
                   capture_output=True, timeout=60)
    subprocess.run(["psql", admin, "-Atqc", f"CREATE DATABASE {db}"], check=True,
                   capture_output=True, timeout=60)
    return admin.rsplit("/", 1)[0] + "/" + db


def store_dump(b):
    """Everything the store holds, as text (to look for what must not be there)."""
    if b.store.startswith("sqlite:"):
        import sqlite3
        db = sqlite3.connect(b.store[7:])
        try:
            return "\n".join(db.iterdump())
        finally:
            db.close()
    return subprocess.run(["pg_dump", "--data-only", b.store], capture_output=True, text=True,
                          timeout=60, check=True).stdout


class Backupmx:
    """One backupmx server with its own config, store and log in a temp dir."""

    def __init__(self, workdir, domains, smtp_port=None, extra_smtp="", extra_queue="",
                 hostname="mx2.test.example", env=None, extra_toml="", store=None,
                 host="127.0.0.1", name="", cwd=None):
        self.dir = workdir
        self.cwd = cwd  # the server's working directory (default: the test's)
        self.host = host
        self.port = smtp_port or free_port(host)
        self.config = os.path.join(workdir, f"backupmx{name}.toml")
        self.log_path = os.path.join(workdir, f"backupmx{name}.log")
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        if store is None:
            store = pg_store_for(workdir, name) if pg_admin_url() else \
                f"sqlite:{workdir}/queue.db"
        self.store = store
        listen = f"[{host}]" if ":" in host and not host.startswith("[") else host
        lines = [f'hostname = "{hostname}"', extra_toml, "[smtp]",
                 f'listen = ["{listen}:{self.port}"]', extra_smtp, "[queue]",
                 f'store = "{store}"', extra_queue]
        if not store.startswith("sqlite:") and "state_dir" not in extra_queue:
            # no file to be beside: the spool and control socket go under the test's directory
            lines.append(f'state_dir = "{workdir}/state{name}"')
        for name, spec in domains.items():
            # spec: "host:port" (the primary), None (route by MX), or a dict of domain keys
            if not isinstance(spec, dict):
                spec = {} if spec is None else {"primary": spec}
            lines += ["[[domain]]", f'name = "{name}"']
            lines += [f'{k} = "{v}"' for k, v in spec.items()]
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, wait=True):
        with open(self.config) as f:  # the ports it listens on (SMTP, admin)
            for listen in re.findall(r"^listen\s*=\s*\[(.*)\]", f.read(), re.M):
                for port in re.findall(r":(\d+)\"", listen):
                    release_port(port)
        ready_before = self.log().count("backupmx ready") if os.path.exists(self.log_path) else 0
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([BIN, "serve", "--config", self.config], stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        if wait:
            wait_until(lambda: self.proc.poll() is not None
                       or self.log().count("backupmx ready") > ready_before,
                       what="backupmx to start")
            assert self.proc.poll() is None, "backupmx exited at start:\n" + self.log()
        return self

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("backupmx did not stop on signal %d" % sig)
        if self.proc:
            self.logf.close()
        return self.proc.returncode if self.proc else None

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.logf.close()

    def cli(self, *args, check=True):
        r = subprocess.run([BIN, *args, "--config", self.config], capture_output=True, text=True,
                           timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"backupmx {' '.join(args)} failed ({r.returncode}): "
                                 f"{r.stdout}{r.stderr}")
        return r

    def queue(self):
        return json.loads(self.cli("queue", "list", "--json").stdout)

    def smtp(self, helo="client.test.example", source=None):
        import smtplib
        s = smtplib.SMTP(self.host, self.port, timeout=30,
                         source_address=(source, 0) if source else None)
        s.ehlo(helo)
        return s

    def wait_log(self, pattern, timeout=20.0, count=1):
        rx = re.compile(pattern)
        return wait_until(lambda: len(rx.findall(self.log())) >= count, timeout,
                          what=f"log line /{pattern}/ x{count}")


def vm_hwm_mb(pid):
    """Peak resident memory of a process so far (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


class SmtpSink:
    """Postfix's smtp-sink as the primary: accepts everything, dumps each message to a file."""

    def __init__(self, workdir, port=None, extra=(), host="127.0.0.1"):
        self.host = host
        self.port = port or free_port()
        self.dump = os.path.join(workdir, f"sink-{host}-{self.port}")
        os.makedirs(self.dump, exist_ok=True)
        os.chmod(self.dump, 0o777)
        self.extra = list(extra)
        self.proc = None
        self.base = self.done = 0  # messages smtp-sink has finished (its -c counter)

    def start(self):
        release_port(self.port)
        exe = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        args = [exe, "-c", "-d", self.dump + "/msg.", *self.extra]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        args += [f"{self.host}:{self.port}", "256"]
        self.base = len(os.listdir(self.dump))  # finished by an earlier run of this sink
        self.done = 0
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        threading.Thread(target=self._count, args=(self.proc.stdout,), daemon=True).start()
        wait_until(lambda: port_open(self.port, self.host) or self.proc.poll() is not None,
                   what="smtp-sink to listen")
        assert self.proc.poll() is None, self.proc.stderr.read()
        return self

    def _count(self, out):
        pending = b""
        while True:
            chunk = out.read1(4096)
            if not chunk:
                return
            pending += chunk
            *lines, pending = pending.split(b"\r")
            for status in lines:  # "sess=N quit=N mesg=N", once a message is finished
                self.done = max(self.done, int(status.rsplit(b"mesg=", 1)[1]))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def messages(self):
        """Parsed dumps: dicts with sender, recipients, mail_args, content (LF line ends)."""
        # smtp-sink writes a dump while the message arrives: only the `done` oldest files are
        # whole messages (the ones still growing are the newest), so a reader never sees one cut.
        # A dump of a transaction cut off midway (its client killed) is removed by smtp-sink: a
        # file may vanish between the listing and the reading, and was never a message.
        done = self.base + self.done
        stamped = []
        for n in os.listdir(self.dump):
            path = os.path.join(self.dump, n)
            try:
                stamped.append((os.stat(path).st_mtime_ns, path))
            except FileNotFoundError:
                pass
        stamped.sort()
        out = []
        for path in sorted(p for _, p in stamped[:done]):
            try:
                with open(path, "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                continue
            out.append(parse_sink_dump(raw))
        return out

    def subjects(self):
        """The Subject of every message received (the tests' way to tell their mail apart)."""
        out = set()
        for m in self.messages():
            for line in m["content"].splitlines():
                if line.startswith(b"Subject: "):
                    out.add(line[9:].strip().decode())
        return out


def parse_sink_dump(raw):
    lines = raw.split(b"\n")
    msg = {"sender": None, "recipients": [], "mail_args": b""}
    i = 0
    while i < len(lines) and lines[i].startswith(b"X-"):
        k, _, v = lines[i].partition(b": ")
        if k == b"X-Mail-Args":
            msg["mail_args"] = v
            msg["sender"] = v[v.index(b"<") + 1:v.index(b">")].decode()
        elif k == b"X-Rcpt-Args":
            msg["recipients"].append(v[v.index(b"<") + 1:v.index(b">")].decode())
        i += 1
    # smtp-sink's own Received: header (with its continuation lines) comes next.
    if i < len(lines) and lines[i].startswith(b"Received: ") and b"smtp-sink" in b"\n".join(lines[i:i + 3]):
        i += 1
        while i < len(lines) and lines[i][:1] in (b"\t", b" "):
            i += 1
    msg["content"] = b"\n".join(lines[i:])
    return msg


class ScriptedPrimary:
    """A small threaded SMTP server for fault injection. `answer(rcpt)` gives the RCPT reply;
    raw transactions (envelope + exact DATA bytes as received) are recorded; concurrency counted."""

    def __init__(self, answer=lambda rcpt: "250 2.1.5 Ok", pipelining=True, port=None,
                 data_reply="250 2.0.0 Ok: queued", data_delay=0.0, host="127.0.0.1", tls=None,
                 family=socket.AF_INET, max_per_connection=None, data_cmd_reply="354 go ahead",
                 after_dot=None, after_dot_then=None):
        self.host = host
        # Faults a real server will not produce (SMTP smuggling through it, broken proxies):
        # `data_cmd_reply` answers DATA (a reply other than 354 sends no body and goes on with
        # commands); `after_dot` is the list of replies sent after the final dot (default
        # [data_reply]; more than one desynchronises the client, none leaves it waiting);
        # `after_dot_then` = "drop" closes the connection after them, "stall" keeps it open and
        # silent until the client goes.
        self.data_cmd_reply = data_cmd_reply
        self.after_dot = after_dot
        self.after_dot_then = after_dot_then
        self.data_commands = 0  # DATA commands seen (with or without a body after them)
        self.tls = None  # (cert, key): offer STARTTLS with this certificate
        if tls:
            import ssl
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*tls)
        self.port = port or 0
        self.answer = answer
        self.pipelining = pipelining
        self.data_reply = data_reply
        self.data_delay = data_delay  # seconds before the final reply: holds connections open
        self.transactions = []
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.connections = 0
        self.reads_with_mail_and_data = 0
        self.rsets = 0
        self.max_per_connection = max_per_connection  # then 421 at the next MAIL, and close
        self.per_connection = []  # transactions carried by each finished connection
        self.mailing = 0  # connections that have sent a MAIL and are still open
        self.mails = []  # at each first MAIL of a connection: (connections mailing, transactions done)
        self.stopping = False
        self.sock = socket.socket(family)
        if port:  # (maybe held by free_port, or left in TIME_WAIT by an earlier server)
            release_port(port)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Bound from now on, listening once started: until then its port refuses connections
        # (a primary that is down), and no other test's server can take it.
        self.sock.bind((host, self.port))
        self.port = self.sock.getsockname()[1]

    def start(self):
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.stopping = True
        if hasattr(self, "thread"):  # (never started: a primary that stayed down)
            self.thread.join(5)
        self.sock.close()

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with self.lock:
            self.active += 1
            self.connections += 1
            self.max_active = max(self.max_active, self.active)
        buf = b""

        def readline():
            nonlocal buf
            while b"\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return b""
                buf += chunk
            line, _, buf = buf.partition(b"\n")
            return line + b"\n"

        def send(s):
            conn.sendall(s.encode() + b"\r\n")

        try:
            conn.settimeout(30)
            send("220 scripted.primary ESMTP")
            mail, accepted = None, []
            carried = 0
            mailed = False
            secure = None  # TLS version once STARTTLS is done
            while True:
                line = readline()
                if not line:
                    return
                cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
                verb = cmd[:4].upper()
                if verb == "EHLO":
                    send("250-scripted.primary")
                    if self.pipelining:
                        send("250-PIPELINING")
                    if self.tls and not secure:
                        send("250-STARTTLS")
                    send("250-8BITMIME")
                    send("250-SMTPUTF8")
                    send("250 SIZE 100000000")
                elif verb == "HELO":
                    send("250 scripted.primary")
                elif verb == "MAIL" and self.max_per_connection is not None and \
                        carried >= self.max_per_connection:
                    send("421 4.7.0 scripted.primary: too many messages on one connection")
                    return
                elif verb == "MAIL":
                    if mail is not None:  # RFC 5321 4.1.4: a second MAIL needs RSET or a DATA end
                        send("503 5.5.1 nested MAIL command")
                        continue
                    if b"DATA\r\n" in buf:  # RCPTs and DATA came in the same write as MAIL
                        with self.lock:
                            self.reads_with_mail_and_data += 1
                    mail = cmd[10:]
                    accepted = []
                    if not mailed:
                        mailed = True
                        with self.lock:
                            self.mailing += 1
                            self.mails.append((self.mailing, len(self.transactions)))
                    send("250 2.1.0 Ok")
                elif verb == "RCPT":
                    addr = cmd[cmd.index("<") + 1:cmd.rindex(">")]
                    reply = self.answer(addr)
                    if reply.startswith("2"):
                        accepted.append(addr)
                    send(reply)
                elif verb == "DATA":
                    with self.lock:
                        self.data_commands += 1
                    if not accepted:
                        send("554 5.5.1 no valid recipients")
                        continue
                    send(self.data_cmd_reply)
                    if not self.data_cmd_reply.startswith("354"):
                        mail, accepted = None, []
                        continue
                    data = b""
                    while not data.endswith(b"\r\n.\r\n") and data != b".\r\n":
                        chunk = readline()
                        if not chunk:
                            return
                        data += chunk
                    if self.data_delay:
                        time.sleep(self.data_delay)
                    with self.lock:
                        self.transactions.append({"mail": mail, "rcpts": list(accepted),
                                                  "data": data, "tls": secure})
                    carried += 1
                    mail, accepted = None, []
                    for reply in ([self.data_reply] if self.after_dot is None else self.after_dot):
                        send(reply)
                    if self.after_dot_then == "drop":
                        return
                    if self.after_dot_then == "stall":
                        while not self.stopping and conn.recv(65536):
                            pass  # read and never answer, until the client hangs up
                        return
                elif cmd.upper() == "STARTTLS" and self.tls and not secure:
                    send("220 2.0.0 go ahead")
                    buf = b""
                    conn = self.tls.wrap_socket(conn, server_side=True)
                    secure = conn.version()
                elif verb == "QUIT":
                    send("221 2.0.0 Bye")
                    return
                elif verb == "RSET":
                    with self.lock:
                        self.rsets += 1
                    mail, accepted = None, []
                    send("250 2.0.0 Ok")
                elif verb == "NOOP":
                    send("250 2.0.0 Ok")
                else:
                    send("502 5.5.2 unknown")
        except OSError:
            pass
        finally:
            with self.lock:
                self.active -= 1
                self.mailing -= 1 if mailed else 0
                self.per_connection.append(carried)
            conn.close()


class E2ETest(unittest.TestCase):
    """Base: a temp dir per test, and a list of things to stop whatever happens."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="bmx-e2e-")
        os.chmod(self.dir, 0o755)  # smtp-sink drops to `nobody` and writes its dumps below
        self.stoppers = []

    def _failed(self):
        """Whether this test has failed so far. (The outcome's `success` cannot tell: Python
        3.11 sets it again for each part, tearDown included.)"""
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        if result is None:
            return not getattr(outcome, "success", True)
        return any(test is self for test, _ in result.failures + result.errors)

    def tearDown(self):
        for stop in reversed(self.stoppers):
            try:
                stop()
            except Exception as e:  # keep stopping the rest
                print("teardown:", e, file=sys.stderr)
        release_all()
        failed = self._failed()
        if failed or os.environ.get("KEEP_E2E"):
            print("kept", self.dir, file=sys.stderr)
            for name in os.listdir(self.dir):
                if name.endswith(".log"):
                    print(f"--- {name} (tail) ---", file=sys.stderr)
                    with open(os.path.join(self.dir, name), errors="replace") as f:
                        print("".join(f.readlines()[-60:]), file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def backupmx(self, domains, **kw):
        b = Backupmx(self.dir, domains, **kw)
        self.stoppers.append(lambda: b.stop(signal.SIGKILL) if b.proc and b.proc.poll() is None else None)
        return b

    def sink(self, **kw):
        s = SmtpSink(self.dir, **kw)
        self.stoppers.append(s.stop)
        return s

    def scripted(self, **kw):
        p = ScriptedPrimary(**kw)
        self.stoppers.append(p.stop)
        return p


class AdminClient:
    """A client of backupmx's admin listener, as a browser or a script uses it: cookies kept,
    the CSRF token sent on changes, or a bearer token. No redirect is followed: tests see them."""

    def __init__(self, port, tls_ca=None, host="127.0.0.1"):
        self.port, self.host, self.tls_ca = port, host, tls_ca
        self.cookies = {}
        self.csrf = None
        self.token = None

    def request(self, method, path, body=None, headers=None):
        import http.client
        import ssl
        if self.tls_ca:
            ctx = ssl.create_default_context(cafile=self.tls_ca)
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=30, context=ctx)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read().decode("utf-8", "replace")
            for k, v in r.getheaders():
                if k.lower() == "set-cookie":
                    name, _, rest = v.partition("=")
                    value = rest.split(";", 1)[0]
                    if "Max-Age=0" in v:
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = value
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data, r.getheaders()
        finally:
            conn.close()

    def login(self, user, password):
        """The login form, as a browser fills it in. Returns the POST's status."""
        import urllib.parse
        status, _, page, _ = self.request("GET", "/login")
        assert status == 200, status
        csrf = re.search(r'name="csrf" value="([^"]*)"', page).group(1)
        form = urllib.parse.urlencode({"user": user, "password": password, "csrf": csrf})
        status, headers, _, _ = self.request(
            "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"})
        if status == 303:
            me = self.api("GET", "/api/v1/me")[1]
            self.csrf = me["csrf"]
        return status

    def api(self, method, path, body=None, csrf=True):
        """(status, JSON or None). Sends the session's CSRF token on changes unless told not."""
        h = {"Content-Type": "application/json"}
        if csrf and self.csrf and method not in ("GET", "HEAD"):
            h["X-CSRF-Token"] = self.csrf
        data = json.dumps(body) if body is not None else None
        status, _, text, _ = self.request(method, path, data, h)
        try:
            return status, json.loads(text) if text.strip() else None
        except ValueError:
            return status, text


def add_user(b, name, role, *domains):
    """`backupmx admin add-user`; returns the one-time password it prints."""
    args = ["admin", "add-user", name, "--role", role]
    for d in domains:
        args += ["--domain", d]
    out = b.cli(*args).stdout
    return re.search(r"^password: (\S+)$", out, re.M).group(1)


def swaks(port, *args, timeout=60):
    """Runs swaks against 127.0.0.1:port; returns (exit code, transcript)."""
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--hide-informational",
                        *args], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


class Raw:
    """A raw SMTP client for byte-exact tests: send bytes, read replies — as text, or as the bytes
    sent, so that a CR, ESC or NUL inside a reply line is seen as it came. IPv4 or IPv6."""

    def __init__(self, port, timeout=10, source=None, host="127.0.0.1"):
        self.s = socket.create_connection((host.strip("[]"), port), timeout=timeout,
                                          source_address=(source, 0) if source else None)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data if isinstance(data, bytes) else data.encode())

    def reply_lines(self):
        """One whole (possibly multi-line) reply: its lines as bytes, each without its CRLF ([] on
        EOF)."""
        lines = []
        while True:
            while b"\n" not in self.buf:
                chunk = self.s.recv(65536)
                if not chunk:
                    return lines
                self.buf += chunk
            line, _, self.buf = self.buf.partition(b"\n")
            if line.endswith(b"\r"):
                line = line[:-1]
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return lines

    def reply(self):
        """One whole reply as text, '' on EOF."""
        return "\n".join(line.decode("utf-8", "replace") for line in self.reply_lines())

    def cmd(self, line):
        self.send(line if isinstance(line, bytes) else line.encode())
        self.send(b"\r\n")
        return self.reply()

    def close(self):
        self.s.close()


def edit_config(b, old, new):
    """Replaces `old` (which must be there) with `new` in a Backupmx's config file."""
    with open(b.config) as f:
        text = f.read()
    assert old in text, old
    with open(b.config, "w") as f:
        f.write(text.replace(old, new))


def main():
    unittest.main(verbosity=2)
