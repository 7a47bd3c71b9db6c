"""postfix_primary: a real Postfix as the primary MX of the end-to-end stories.

    p = PostfixPrimary(workdir, tls=(chain, key)).start()   # smtpd on 127.0.0.1:p.port
    ... backupmx delivers to it ...
    p.messages()   # each delivered message: sender, recipient, original recipient, raw, message
    p.maillog()    # Postfix's log (workdir/<name>.log; no syslog)
    p.stop()

A throw-away instance (postfix_instance.PostfixInstance) under workdir/<name>: its own
config_directory, queue_directory and data_directory, listening on one loopback address only.
Mail for its domains goes to virtual(8), into one Maildir per domain under workdir/<name>/mail
(virtual_mailbox_base), owned by `nobody`. Every recipient of a domain is accepted (the catch-all
@domain entry); each recipient's copy is a file of its own, headed by the Return-Path:,
X-Original-To: and Delivered-To: fields virtual(8) prepends to what smtpd received.

PIPELINING is offered (Postfix's default) unless pipelining=False. tls=(certificate chain, key)
offers STARTTLS (smtpd_tls_security_level = may) and logs each TLS session (smtpd_tls_loglevel
= 1). trace_io=True runs smtpd at verbose level 3: its log then shows each read(2) from the client
("fd N got M") between the commands it read ("< client: MAIL FROM:<...>"), which is how a test
sees whether commands arrived pipelined. It never listens beyond the given address and never
touches the system's Postfix (see postfix_instance).
"""
import os
import pwd
import re
import shutil

from ports import free_port
from postfix_instance import PostfixInstance

DELIVERY_FIELDS = (b"Return-Path:", b"X-Original-To:", b"Delivered-To:")


def _field(raw, name):
    m = re.search(rb"^" + re.escape(name) + rb" ?(.*)$", raw, re.M)
    return m.group(1).decode("utf-8", "replace") if m else None


def _skip_field(msg, i):
    """Index just past the header field (with its continuation lines) that starts at i."""
    while True:
        i = msg.index(b"\n", i) + 1
        if msg[i:i + 1] not in (b" ", b"\t"):
            return i


def parse_maildir_file(raw):
    """A file virtual(8) wrote -> dict: sender (Return-Path, "" for <>), recipient
    (Delivered-To), original_recipient (X-Original-To), raw (the file's bytes), received (Postfix
    smtpd's own Received: field) and message: what backupmx sent in DATA, with CRLF line ends
    again (Postfix stores lines with LF; the tests' bodies have no bare CR or LF)."""
    i = 0
    for name in DELIVERY_FIELDS:
        if not raw.startswith(name, i):
            raise AssertionError(f"no {name!r} where virtual(8) puts it: {raw[:300]!r}")
        i = _skip_field(raw, i)
    received = None
    if raw.startswith(b"Received: ", i):  # smtpd's: "by <myhostname> (Postfix) with ESMTP..."
        j = _skip_field(raw, i)
        if b"(Postfix)" in raw[i:j]:
            received, i = raw[i:j], j
    return_path = _field(raw, b"Return-Path:")
    return {"sender": return_path.strip()[1:-1], "recipient": _field(raw, b"Delivered-To:"),
            "original_recipient": _field(raw, b"X-Original-To:"), "raw": raw,
            "received": received, "message": raw[i:].replace(b"\n", b"\r\n")}


class PostfixPrimary:
    """A Postfix accepting every recipient of `domains` on host:port and delivering to Maildirs."""

    def __init__(self, workdir, port=None, tls=None, host="127.0.0.1",
                 domains=("example.test",), hostname="primary.example.test", pipelining=True,
                 trace_io=False, settings=None, name="postfix"):
        self.host = host
        self.port = port or free_port(host)
        self.root = os.path.join(os.path.abspath(workdir), name)
        self.mail = os.path.join(self.root, "mail")
        os.makedirs(self.mail, exist_ok=True)
        nobody = pwd.getpwnam("nobody")
        shutil.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        main = {
            "myhostname": hostname,
            "smtputf8_enable": "yes",
            "message_size_limit": str(50 * 1024 * 1024),  # a 30 MB body and then some
            "virtual_transport": "virtual",
            "virtual_mailbox_domains": ", ".join(domains),
            "virtual_mailbox_maps": "inline:{ " + ", ".join(
                f"@{d}={d}/" for d in domains) + " }",  # "/": a Maildir
            "virtual_mailbox_base": self.mail,
            "virtual_mailbox_limit": "0",
            "virtual_uid_maps": f"static:{nobody.pw_uid}",
            "virtual_gid_maps": f"static:{nobody.pw_gid}",
            # Mail from backupmx is a remote client's: no header is rewritten or added (From:,
            # Date:, Message-ID:), though backupmx connects from an address Postfix listens on.
            "local_header_rewrite_clients": "",
            # No local(8) delivery here: nothing to read in /etc/aliases.
            "alias_maps": "",
            "alias_database": "",
            # Nothing beyond loopback: no PTR lookup of the client in the system's DNS (whose
            # server the tests cannot reach), and no mail leaves (a bounce goes nowhere).
            "smtpd_peername_lookup": "no",
            "default_transport": "error:this test Postfix sends no mail out",
            "relay_transport": "error:this test Postfix sends no mail out",
        }
        if not pipelining:
            main["smtpd_discard_ehlo_keywords"] = "pipelining"
        if tls:
            main.update({
                "smtpd_tls_security_level": "may",
                "smtpd_tls_received_header": "yes",  # "(using TLSv1.3 with cipher ...)"
                "smtpd_tls_cert_file": tls[0],
                "smtpd_tls_key_file": tls[1],
                "smtpd_tls_loglevel": "1",
            })
        main.update(settings or {})
        # The log beside the test's others (<workdir>/<name>.log): a failed test prints its tail.
        self.instance = PostfixInstance(self.root, host, self.port, main,
                                        smtpd_args=["-v", "-v", "-v"] if trace_io else (),
                                        maillog=os.path.join(os.path.abspath(workdir),
                                                             f"{name}.log"))

    def start(self, timeout=30):
        self.instance.start(timeout)
        return self

    def stop(self, timeout=30):
        self.instance.stop(timeout)

    def pids(self):
        return self.instance.pids()

    def maillog(self):
        return self.instance.maillog()

    def queued(self):
        return self.instance.queued()

    def messages(self):
        """Every message delivered so far (one per recipient), oldest first. virtual(8) writes
        in tmp/ and renames into new/: a file in new/ is whole."""
        out = []
        for domain in sorted(os.listdir(self.mail)):
            new = os.path.join(self.mail, domain, "new")
            if not os.path.isdir(new):
                continue
            for n in os.listdir(new):
                path = os.path.join(new, n)
                with open(path, "rb") as f:
                    out.append((os.stat(path).st_mtime_ns, n, parse_maildir_file(f.read())))
        return [m for _, _, m in sorted(out, key=lambda t: t[:2])]

    def reads_within_transactions(self):
        """With trace_io: for each mail transaction smtpd saw, how many reads from the client
        came after the one that brought MAIL FROM and up to the one that brought DATA. 0: MAIL,
        every RCPT and DATA came in one read (pipelined, RFC 2920); one command at a time gives
        one read per RCPT and one for DATA. The client's descriptor is the one the EHLO came
        from (smtpd also reads from cleanup and trivial-rewrite)."""
        last_fd, client, reads, mail_at, out = {}, {}, {}, {}, []
        for line in self.maillog().splitlines():
            m = re.search(r"postfix/smtpd\[(\d+)\]: (.*)$", line)
            if not m:
                continue
            pid, text = m.groups()
            got = re.match(r"vstream_buf_get_ready: fd (\d+) got \d+", text)
            if got:
                reads[pid, got.group(1)] = reads.get((pid, got.group(1)), 0) + 1
                last_fd[pid] = got.group(1)
                continue
            cmd = re.match(r"< \S+: (\w+)", text)
            if not cmd:
                continue
            verb = cmd.group(1).upper()
            if verb in ("EHLO", "HELO"):
                client[pid] = last_fd.get(pid)
            fd = client.get(pid)
            if verb == "MAIL":
                mail_at[pid] = reads.get((pid, fd), 0)
            elif verb == "DATA" and pid in mail_at:
                out.append(reads.get((pid, fd), 0) - mail_at.pop(pid))
        return out

    def sessions(self):
        """smtpd's "disconnect from" lines, one per SMTP session, as dicts of its command
        counts (ehlo, starttls, mail, rcpt, data, quit, commands); a session that sent no MAIL
        (backupmx's probe) has mail=0."""
        out = []
        for line in self.maillog().splitlines():
            m = re.search(r"postfix/smtpd\[\d+\]: disconnect from \S+ (.*)$", line)
            if m:
                counts = {}
                for k, v in re.findall(r"(\w+)=(\d+)(?:/\d+)?", m.group(1)):
                    counts[k] = int(v)
                counts.setdefault("mail", 0)
                out.append(counts)
        return out
