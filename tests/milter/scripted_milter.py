#!/usr/bin/python3
# A milter built on Debian's python3-milter (pymilter over the real libmilter), scripted per run
# through the environment, for tests/net/milter_real_test.cpp. Run it with /usr/bin/python3 (the
# package installs for Debian's python, not a pyenv one). It logs every callback it receives,
# with the macros it can see, one JSON object per line, so the test can check what was sent.
#
#   MILTER_SOCKET     libmilter syntax: unix:/path or inet:PORT@127.0.0.1 (required)
#   MILTER_READY      file written once the socket listens (required)
#   MILTER_LOG        file the callbacks are logged to (required)
#   MILTER_STAGE      connect|helo|mail|rcpt|data|header|eoh|body|eom: where ACTION happens
#   MILTER_ACTION     continue|accept|reject|tempfail|discard|reply (default continue)
#   MILTER_REPLY      for reply: "550 5.7.1 text" (setreply, then REJECT or TEMPFAIL)
#   MILTER_MATCH      at rcpt: act only on recipients containing this text
#   MILTER_EDITS      JSON list of edits made at eom, in order:
#                     ["add", name, value] ["insert", index, name, value]
#                     ["change", name, index, value] ["delete", name, index] ["quarantine", why]
#                     ["body", text] ["addrcpt", rcpt] ["delrcpt", rcpt] ["chgfrom", sender]
#                     ["progress"]
#                     ["sleep", seconds]
#   MILTER_NOREPLY    comma list of callbacks that do not reply (@Milter.noreply)
#   MILTER_NOCALLBACK comma list of callbacks the MTA must not call (@Milter.nocallback)
#   MILTER_LEADSPC    "1": header values with their leading space (SMFIP_HDR_LEADSPC)
#   MILTER_STDIN_EOF  "1": exit at once when stdin reaches EOF (the test closed its pipe, or
#                     died). SIGTERM works too, but libmilter takes up to 5 s to notice it.
import hashlib
import json
import os
import sys
import threading
import time

import Milter
import milter

ENV = os.environ
STAGE = ENV.get("MILTER_STAGE", "eom")
ACTION = ENV.get("MILTER_ACTION", "continue")
REPLY = ENV.get("MILTER_REPLY", "")
MATCH = ENV.get("MILTER_MATCH", "")
EDITS = json.loads(ENV.get("MILTER_EDITS", "[]"))
NOREPLY = [x for x in ENV.get("MILTER_NOREPLY", "").split(",") if x]
NOCALLBACK = [x for x in ENV.get("MILTER_NOCALLBACK", "").split(",") if x]
LOG = ENV["MILTER_LOG"]
MACROS = ["j", "_", "v", "i", "{daemon_name}", "{client_addr}", "{client_name}",
          "{client_port}", "{mail_addr}", "{rcpt_addr}", "{auth_type}"]
log_lock = threading.Lock()


def text(v):
    if isinstance(v, bytes):
        return v.decode("latin-1")
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape").decode("latin-1")
    return v


def decision(self, stage, subject=""):
    if stage != STAGE or ACTION == "continue":
        return Milter.CONTINUE
    if stage == "rcpt" and MATCH and MATCH not in subject:
        return Milter.CONTINUE
    if ACTION == "accept":
        return Milter.ACCEPT
    if ACTION == "reject":
        return Milter.REJECT
    if ACTION == "tempfail":
        return Milter.TEMPFAIL
    if ACTION == "discard":
        return Milter.DISCARD
    if ACTION == "reply":
        code, xcode, msg = REPLY.split(" ", 2)
        self.setreply(code, xcode, msg)
        return Milter.REJECT if code.startswith("5") else Milter.TEMPFAIL
    raise ValueError("MILTER_ACTION " + ACTION)


def record(self, cb, *args):
    macros = {}
    for m in MACROS:
        v = self.getsymval(m)
        if v is not None:
            macros[m] = text(v)
    line = json.dumps({"cb": cb, "args": [text(a) for a in args], "macros": macros})
    with log_lock:
        with open(LOG, "a") as f:
            f.write(line + "\n")


def make_class():
    def connect(self, hostname, family, hostaddr):
        self.body_bytes = b""
        self.chunks = 0
        record(self, "connect", hostname, family, list(hostaddr) if hostaddr else None)
        return decision(self, "connect")

    def hello(self, name):
        record(self, "helo", name)
        return decision(self, "helo")

    def envfrom(self, sender, *args):
        self.body_bytes = b""
        self.chunks = 0
        record(self, "mail", sender, *args)
        return decision(self, "mail")

    def envrcpt(self, rcpt, *args):
        record(self, "rcpt", rcpt, *args)
        return decision(self, "rcpt", rcpt)

    def data(self):
        record(self, "data")
        return decision(self, "data")

    def header(self, name, value):
        record(self, "header", name, value)
        return decision(self, "header")

    def eoh(self):
        record(self, "eoh")
        return decision(self, "eoh")

    def body(self, chunk):
        self.body_bytes += chunk
        self.chunks += 1
        return decision(self, "body")

    def eom(self):
        record(self, "eom", len(self.body_bytes), self.chunks,
               hashlib.sha256(self.body_bytes).hexdigest())
        for e in EDITS:
            op = e[0]
            if op == "add":
                self.addheader(e[1], e[2])
            elif op == "insert":
                self.addheader(e[2], e[3], e[1])
            elif op == "change":
                self.chgheader(e[1], e[2], e[3])
            elif op == "delete":
                self.chgheader(e[1], e[2], "")
            elif op == "quarantine":
                self.quarantine(e[1])
            elif op == "body":
                self.replacebody(e[1].encode("latin-1"))
            elif op == "addrcpt":
                self.addrcpt(e[1])
            elif op == "delrcpt":
                self.delrcpt(e[1])
            elif op == "chgfrom":
                self.chgfrom(e[1])
            elif op == "progress":
                self.progress()
            elif op == "sleep":
                time.sleep(float(e[1]))
            else:
                raise ValueError("edit " + op)
        return decision(self, "eom")

    def abort(self):
        record(self, "abort")
        return Milter.CONTINUE

    def close(self):
        record(self, "close")
        return Milter.CONTINUE

    ns = {"connect": connect, "hello": hello, "envfrom": envfrom, "envrcpt": envrcpt,
          "data": data, "header": header, "eoh": eoh, "body": body, "eom": eom,
          "abort": abort, "close": close}
    names = {"helo": "hello", "mail": "envfrom", "rcpt": "envrcpt"}
    for cb in NOREPLY:
        name = names.get(cb, cb)
        ns[name] = Milter.noreply(ns[name])
    for cb in NOCALLBACK:
        name = names.get(cb, cb)
        ns[name] = Milter.nocallback(ns[name])
    klass = type("Scripted", (Milter.Base,), ns)
    if ENV.get("MILTER_LEADSPC") == "1":
        klass = Milter.header_leading_space(klass)
    return klass


def exit_at_eof():
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)


def main():
    if ENV.get("MILTER_STDIN_EOF") == "1":
        threading.Thread(target=exit_at_eof, daemon=True).start()
    Milter.factory = make_class()
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.ADDRCPT |
                     Milter.DELRCPT | Milter.CHGFROM | Milter.QUARANTINE)
    # Milter.runmilter(), with a ready file between opening the socket and serving it.
    milter.set_connect_callback(Milter.connect_callback)
    milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    milter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    milter.set_close_callback(Milter.close_callback)
    milter.setconn(ENV["MILTER_SOCKET"])
    milter.settimeout(30)
    milter.register("scripted", data=lambda ctx: ctx.getpriv().data(),
                    unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
                    negotiate=Milter.negotiate_callback)
    milter.opensocket(True)
    with open(ENV["MILTER_READY"], "w") as f:
        f.write(str(os.getpid()))
    milter.main()


if __name__ == "__main__":
    sys.exit(main())
