"""postfix_instance: one throw-away Postfix, for the tests (tests/e2e/postfix_primary.py) and the
benchmark (bench/run.py).

    pf = PostfixInstance(root, "127.0.0.1", port, {"myhostname": "mx.test", ...})
    pf.start()        # `postfix -c ROOT/conf start`; returns once the port listens
    pf.maillog()      # its log (maillog_file = ROOT/maillog), as text
    pf.stop()         # `postfix -c ROOT/conf stop`; returns once no process of it is left

Everything it has lives under `root`: conf/ (main.cf, master.cf: its config_directory), queue/
(queue_directory), data/ (data_directory, owned by mail_owner) and maillog (or a log file named
by the caller). Its smtpd listens on
host:port only (a loopback address; the port comes from ports.free_port, released here just
before Postfix binds it). It runs as root, as `postfix start` needs, with the system's mail_owner
(postfix) and setgid_group (postdrop).

It must never touch the system Postfix: not /etc/postfix/main.cf, not /var/spool/postfix, not
port 25, not syslog. master.cf is the system's, read, with its `smtp inet` line replaced.

Diagnostics: start() and stop() are bounded in time and raise AssertionError with the postfix
command's output and the tail of the maillog. stop() kills, by pid, whatever is still running in
the queue directory after the timeout (every Postfix daemon works there) and says so.
"""
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time

from ports import release_port

SYSTEM_MASTER_CF = "/etc/postfix/master.cf"


def _wait(pred, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


def listening(host, port):
    """Whether a socket listens on host:port (IPv4), read from /proc/net/tcp: asking costs no
    connection, so a server's log counts only its clients'."""
    want = "%08X:%04X" % (int.from_bytes(socket.inet_aton(host), "little"), int(port))
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":  # 0A: LISTEN
                return True
    return False


def master_cf(listen, smtpd_args=(), chroot=None, base=SYSTEM_MASTER_CF):
    """The system's master.cf with its `smtp inet` service replaced by one smtpd on `listen`
    ("host:port", not chrooted) with extra arguments `smtpd_args` (e.g. ["-o", "name=value"]).
    chroot=False turns chroot off for every service (a fresh queue directory holds none of the
    files a chrooted daemon wants: /etc/services, resolv.conf, ...); None keeps the system's."""
    out = []
    with open(base) as f:
        for line in f.read().splitlines():
            fields = line.split()
            if not line[:1].isspace() and fields[:2] == ["smtp", "inet"]:
                line = f"{listen} inet n - n - - smtpd"
                if smtpd_args:
                    line += " " + " ".join(shlex.quote(a) for a in smtpd_args)
            elif chroot is False and len(fields) >= 8 and not line[:1].isspace() \
                    and not line.startswith("#"):
                fields[4] = "n"
                line = " ".join(fields)
            out.append(line)
    return "\n".join(out) + "\n"


def _processes_in(directory):
    """Pids of the processes whose working directory is `directory` (also once it is removed:
    the kernel then names it "DIR (deleted)")."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/cwd") in (directory, directory + " (deleted)"):
                out.append(int(entry))
        except OSError:
            pass
    return out


class PostfixInstance:
    """A Postfix of its own under `root`, smtpd on host:port. `settings` (name -> value) go into
    main.cf after the ones every instance has (and win over them). Its log goes to `maillog`
    (default ROOT/maillog)."""

    def __init__(self, root, host, port, settings, smtpd_args=(), chroot=False, maillog=None):
        self.root = os.path.abspath(root)
        self.host, self.port = host, int(port)
        self.conf = os.path.join(self.root, "conf")
        self.queue = os.path.join(self.root, "queue")
        self.data = os.path.join(self.root, "data")
        self.maillog_path = os.path.abspath(maillog or os.path.join(self.root, "maillog"))
        for d in (self.conf, self.queue, self.data):
            os.makedirs(d, exist_ok=True)
        shutil.chown(self.data, "postfix")
        main = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue,
            "data_directory": self.data,
            "mydestination": "",
            # The interface's own address: Postfix refuses another (127.0.0.21 is loopback but
            # not lo's address). The one smtpd binds host:port from master.cf whatever this says.
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "maillog_file": self.maillog_path,
            "maillog_file_prefixes": os.path.dirname(self.maillog_path),
        }
        main.update(settings)
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write("".join(f"{k} = {v}\n" for k, v in main.items()))
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(master_cf(f"{host}:{self.port}", smtpd_args, chroot))
        self.output = ""  # what the last postfix(1) command printed

    def postfix(self, *args, timeout=120):
        """Runs `postfix -c CONF ARGS...`. postfix(1) reports only to a terminal or syslog:
        `script` gives it a terminal, so its words land in self.output."""
        cmd = " ".join(shlex.quote(a) for a in ["postfix", "-c", self.conf, *args])
        r = subprocess.run(["script", "-qc", cmd, "/dev/null"], capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        self.output = r.stdout + r.stderr
        return r

    def master_pid(self):
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if os.path.exists(f"/proc/{pid}") else None

    def pids(self):
        """The master and every daemon it runs (all of them work in the queue directory)."""
        return _processes_in(self.queue)

    def start(self, timeout=30):
        release_port(self.port)
        self.postfix("start")
        if not _wait(lambda: listening(self.host, self.port) and self.master_pid(), timeout):
            raise AssertionError(f"postfix did not listen on {self.host}:{self.port} in "
                                 f"{timeout}s:\n{self.output}\n{self.maillog()[-3000:]}")
        return self

    def stop(self, timeout=30):
        """Stops it and waits until no process of it is left; SIGKILLs stragglers after
        `timeout` and then raises."""
        if not self.pids():
            return
        self.postfix("stop")
        if _wait(lambda: not self.pids() and not listening(self.host, self.port), timeout):
            return
        left = self.pids()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _wait(lambda: not self.pids(), 5)
        raise AssertionError(f"postfix did not stop in {timeout}s (killed {left}):\n"
                             f"{self.output}\n{self.maillog()[-3000:]}")

    def maillog(self):
        try:
            with open(self.maillog_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def queued(self):
        """Messages in its queue (all queues but the bounce logs)."""
        n = 0
        for q in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(os.path.join(self.queue, q)):
                n += len(files)
        return n
