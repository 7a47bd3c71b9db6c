"""fsync_trace: proves from an strace log that "250 queued as" means "on disk".

A kill -9 leaves the page cache alone, so a crash test passes even when the store never syncs.
This module reads what backupmx actually asked the kernel, recorded by

    strace -f -tt -T -s 65536 -o FILE \
        -e trace=read,recvfrom,recvmsg,write,sendto,sendmsg,writev,fsync,fdatasync,openat,close,\
accept,accept4,dup,dup2,dup3,fcntl,connect,pwrite64

and checks, for every "250 ... queued as ID" written to a client socket, that before that write
started the store was made durable after the message had arrived:

- SQLite: an fsync/fdatasync of the store's database file or its -wal file (their fds found from
  `openat` and followed through dup/dup2/dup3/fcntl(F_DUPFD*), forgotten at `close`) that
  returned 0, that STARTED after the read that brought the message's final dot (CRLF.CRLF) from
  that same socket had returned, and that RETURNED before the 250 was written. When pwrite64 is
  traced too, that sync must also follow a write to the store, begun after the dot, that holds
  the queue id (the message's row in a WAL frame): a sync of another commit then does not count.
- PostgreSQL (check(..., pg_port=PORT)): the fsync is the database server's, so instead, on a
  database socket (a `connect` to PORT or to a .s.PGSQL.PORT unix socket), a write holding the
  queue id that started after the dot read, in a transaction whose CommandComplete "COMMIT" reply
  was read before the 250 was written (a COMMIT of some other transaction does not count).

Interface: `check(text, store_path=None, pg_port=None) -> [violation, ...]` (pure, no I/O), and
`analyse(...)` returning a Report with the count of 250s checked. `load(path)` reads a trace
written with -o FILE (-f) or the FILE.PID files of -ff.

Parsing details that matter:
- With -f, a syscall interrupted by another thread's line is split into "NAME(args <unfinished
  ...>" and "<... NAME resumed>rest"; the halves are joined, the syscall's start is the first
  line's time and its completion the resumed line's (or start + -T duration, the later).
- The thread that reads the dot is not the one that syncs: events are matched by fd and time,
  never by thread. (Timestamps follow causality: strace stamps a thread's syscall exit before the
  thread runs on, so data read by one thread reaches another only after that stamp.)
- The final dot may be split across reads, and -s may cut a string ("..."... in strace's output):
  the last 4 bytes read are kept per fd; after a cut string they are unknown, and a read is then
  taken as possibly holding the dot if its start could complete one. The dot's time is always the
  LATEST read that holds or may hold it before the 250, so a cut never makes a late sync look
  early.
- Syscalls that never returned (`= ?`, e.g. at a kill) and failed ones (`= -1 ...`) count for
  nothing.
It must never pass a trace on guesswork: what it cannot see counts against the server.
"""
import glob
import os
import re
from dataclasses import dataclass, field

DOT = b"\r\n.\r\n"
QUEUED = re.compile(rb"^250[ -].*?queued as ([^\r\n]+)", re.M)
PG_COMMIT_REPLY = b"C\x00\x00\x00\x0bCOMMIT\x00"  # CommandComplete, length 11, tag "COMMIT"

_LINE = re.compile(r"^(?:\[pid\s+)?(?:(\d+)\]?\s+)?(\d\d:\d\d:\d\d\.\d+|\d+\.\d+)\s+(.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_UNFINISHED = " <unfinished ...>"
_RESULT = re.compile(r"^\s*=\s*(\S+)(.*?)(?:\s+<(\d+\.\d+)>)?\s*$")

READS = {"read", "recvfrom", "recvmsg"}
WRITES = {"write", "sendto", "sendmsg", "writev"}
SYNCS = {"fsync", "fdatasync"}


@dataclass
class Call:
    pid: int
    name: str
    args: str        # the text between the call's parentheses
    ret: str         # "5", "-1", "?"
    start: float     # seconds since the trace's first midnight
    end: float       # when it returned
    line: int        # line number of its (last) line, for messages

    @property
    def ok(self):
        return self.ret not in ("?",) and not self.ret.startswith("-")

    def retval(self):
        try:
            return int(self.ret, 0)
        except ValueError:
            return None


@dataclass
class Reply:
    fd: int
    ids: str
    at: float
    line: int
    dot_at: float = None     # when the read holding (or maybe holding) its final dot returned
    dot_line: int = None
    dot_seen: bool = False   # the dot was seen in the bytes, not only possible in cut ones
    proof: str = ""


@dataclass
class Report:
    replies: list = field(default_factory=list)   # every 250 queued-as checked
    violations: list = field(default_factory=list)
    syncs: int = 0                                 # store syncs (or COMMIT round trips) seen
    cut_reads: int = 0                             # client reads whose string -s cut

    @property
    def checked(self):
        return len(self.replies)


def _time(stamp, state):
    """-tt "HH:MM:SS.us" (rolled over past midnight) or -ttt epoch seconds, as float seconds."""
    if ":" in stamp:
        h, m, s = stamp.split(":")
        t = int(h) * 3600 + int(m) * 60 + float(s) + state["day"] * 86400
        if state["last"] is not None and t < state["last"] - 43200:
            state["day"] += 1
            t += 86400
    else:
        t = float(stamp)
    state["last"] = t
    return t


def _split_call(text):
    """'name(args) = ret ... <dur>' -> (name, args, rest after the closing paren), quotes and
    nesting respected. None if the text is not a whole call."""
    m = re.match(r"^(\w+)\(", text)
    if not m:
        return None
    depth, i, n = 1, m.end(), len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return m.group(1), text[m.end():i], text[i + 1:]
        i += 1
    return None


def calls(text):
    """The trace's syscalls, unfinished halves joined, in the order they completed."""
    pending = {}  # pid -> (name, first half text, start)
    state = {"day": 0, "last": None}
    out = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        m = _LINE.match(raw)
        if not m:
            continue
        pid = int(m.group(1) or 0)
        t = _time(m.group(2), state)
        body = m.group(3)
        if body.startswith(("+++", "---")):
            continue
        start = t
        r = _RESUMED.match(body)
        if r:
            name, rest = r.groups()
            first = pending.pop(pid, None)
            if first is None or first[0] != name:
                continue  # its first half is not in the trace (attached midway)
            body, start = first[1] + rest, first[2]
        if body.endswith(_UNFINISHED):
            name = body.split("(", 1)[0]
            pending[pid] = (name, body[:-len(_UNFINISHED)], start)
            continue
        parts = _split_call(body)
        if parts is None:
            continue
        name, args, rest = parts
        res = _RESULT.match(rest)
        if not res:
            continue
        dur = float(res.group(3)) if res.group(3) else 0.0
        end = max(t, start + dur)
        out.append(Call(pid, name, args, res.group(1), start, end, lineno))
    return out


_ESC = {"n": b"\n", "r": b"\r", "t": b"\t", "v": b"\v", "f": b"\f", "a": b"\a", "b": b"\b",
        '"': b'"', "\\": b"\\", "'": b"'", "?": b"?", "e": b"\x1b"}


def strings(args):
    """The quoted strings of a call's arguments, decoded, each with whether -s cut it."""
    out = []
    i, n = 0, len(args)
    while i < n:
        if args[i] != '"':
            i += 1
            continue
        i += 1
        buf = bytearray()
        while i < n and args[i] != '"':
            c = args[i]
            if c != "\\":
                buf += c.encode("latin-1", "replace")
                i += 1
                continue
            e = args[i + 1] if i + 1 < n else ""
            if e == "x":
                buf.append(int(args[i + 2:i + 4], 16))
                i += 4
            elif e.isdigit():
                j = i + 1
                while j < n and j < i + 4 and args[j] in "01234567":
                    j += 1
                buf.append(int(args[i + 1:j], 8) & 0xFF)
                i = j
            else:
                buf += _ESC.get(e, e.encode())
                i += 2
        i += 1
        cut = args.startswith("...", i)
        out.append((bytes(buf), cut))
    return out


def payload(call):
    """(bytes, cut) carried by a read/write-like call: the data strings only (for the msg
    calls and writev, the iov_base ones, not a sockaddr's inet_addr)."""
    if call.name in ("recvmsg", "sendmsg", "writev"):
        parts = []
        for m in re.finditer(r'iov_base=', call.args):
            s = strings(call.args[m.end():])
            if s:
                parts.append(s[0])
        data = b"".join(p for p, _ in parts)
        return data, any(c for _, c in parts)
    s = strings(call.args)
    return s[0] if s else (b"", False)


def _first_int(args):
    m = re.match(r"\s*(-?\d+)", args)
    return int(m.group(1)) if m else None


def _may_end_dot(tail, data, cut):
    """Whether tail+data holds CRLF.CRLF (True), may hold it (None: bytes unknown), or not."""
    if tail is not None and DOT in tail + data:
        return True
    if tail is None and DOT in data:
        return True
    if cut:
        return None  # the end of this read is not in the trace
    if tail is None and any(data.startswith(DOT[k:]) for k in range(1, len(DOT))):
        return None  # may complete a dot begun in bytes the trace did not show
    return False


def analyse(text, store_path=None, pg_port=None):
    """Checks every 250 queued-as reply of the trace. store_path: the SQLite database (its -wal
    is the same path + "-wal"); None: every file whose -wal is opened in the trace. pg_port: the
    PostgreSQL store's port: check COMMIT round trips instead of syncs."""
    rep = Report()
    all_calls = calls(text)
    if store_path is not None:
        store_files = {os.path.normpath(store_path), os.path.normpath(store_path) + "-wal"}
    else:
        store_files = set()
        for c in all_calls:
            if c.name == "openat":
                s = strings(c.args)
                if s and s[0][0].endswith(b"-wal"):
                    p = s[0][0].decode("utf-8", "replace")
                    store_files |= {p, p[:-4]}
    store_fds = set()      # fds of the store's files, now
    db_fds = set()         # fds of sockets to PostgreSQL, now
    clients = {}           # client socket fd -> {"tail", "dot"(time, line, seen), "since"}
    syncs = []             # (start, end, line, what) of store syncs that returned 0
    store_writes = []      # (start, bytes) of writes to the store's files, if traced
    db_writes = {}         # db fd -> [(start, bytes)] of its writes since its last COMMIT reply
    commits = []           # ([(start, bytes)] of the transaction's writes, reply end, line)

    def forget(fd):
        store_fds.discard(fd)
        db_fds.discard(fd)
        clients.pop(fd, None)
        db_writes.pop(fd, None)

    for c in all_calls:
        fd = _first_int(c.args)
        if c.name == "connect" and fd is not None and pg_port is not None and c.ret != "?":
            # (non-blocking: -1 EINPROGRESS, then connected)
            if re.search(rf"htons\({pg_port}\)|\.s\.PGSQL\.{pg_port}\b", c.args):
                db_fds.add(fd)
            continue
        if not c.ok:
            continue
        ret = c.retval()
        if c.name == "openat" and ret is not None:
            forget(ret)
            s = strings(c.args)
            if s and os.path.normpath(s[0][0].decode("utf-8", "replace")) in store_files:
                store_fds.add(ret)
        elif c.name == "close" and fd is not None:
            forget(fd)
        elif c.name in ("accept", "accept4") and ret is not None:
            forget(ret)
            clients[ret] = {"tail": b"", "dot": None, "since": False}
        elif c.name in ("dup", "dup2", "dup3") or (
                c.name == "fcntl" and re.match(r"\s*\d+,\s*F_DUPFD", c.args)):
            if ret is not None and fd is not None and ret != fd:
                was_store, was_db = fd in store_fds, fd in db_fds
                was_client = clients.get(fd)
                forget(ret)
                if was_store:
                    store_fds.add(ret)
                if was_db:
                    db_fds.add(ret)
                if was_client is not None:
                    clients[ret] = was_client  # the same socket: the same byte stream
        elif c.name in SYNCS and fd in store_fds:
            syncs.append((c.start, c.end, c.line, f"{c.name}({fd})"))
        elif c.name in ("pwrite64", "write", "pwritev", "pwritev2") and fd in store_fds:
            store_writes.append((c.start, payload(c)[0]))
        elif c.name in READS and fd in clients and ret:
            cl = clients[fd]
            data, cut = payload(c)
            rep.cut_reads += cut
            dot = _may_end_dot(cl["tail"], data, cut)
            cl["since"] = True
            if dot is not False:
                cl["dot"] = (c.end, c.line, dot is True)
            if cut:
                cl["tail"] = None
            elif cl["tail"] is None and len(data) < len(DOT) - 1:
                pass  # still unknown: the bytes before these are not in the trace
            else:
                cl["tail"] = ((cl["tail"] or b"") + data)[-(len(DOT) - 1):]
        elif c.name in READS and fd in db_fds and ret:
            data, _ = payload(c)
            if PG_COMMIT_REPLY in data:
                commits.append((db_writes.pop(fd, []), c.end, c.line))
        elif c.name in WRITES and fd in db_fds:
            db_writes.setdefault(fd, []).append((c.start, payload(c)[0]))
        elif c.name in WRITES and fd in clients:
            data, _ = payload(c)
            for m in QUEUED.finditer(data):
                cl = clients[fd]
                r = Reply(fd, m.group(1).decode("utf-8", "replace").strip(), c.start, c.line)
                if cl["dot"] is not None:
                    r.dot_at, r.dot_line, r.dot_seen = cl["dot"]
                rep.replies.append(r)
                cl["dot"], cl["since"] = None, False
    rep.syncs = len(commits) if pg_port is not None else len(syncs)

    for r in rep.replies:
        where = f"line {r.line}: 250 queued as {r.ids} on fd {r.fd}"
        if r.dot_at is None:
            rep.violations.append(f"{where}: no final dot was read on this socket before it")
            continue
        if pg_port is not None:
            # Each id the reply names was sent to the database after the dot, in a transaction
            # whose COMMIT reply was read before the 250.
            missing = [qid for qid in r.ids.split() if not any(
                e <= r.at and any(w >= r.dot_at and qid.encode() in data for w, data in writes)
                for writes, e, _ in commits)]
            if not missing:
                r.proof = "COMMIT reply read before it"
            else:
                rep.violations.append(
                    f"{where}: {' '.join(missing)} not sent to the database after its final dot "
                    f"was read (line {r.dot_line}) in a transaction whose COMMIT reply was read "
                    f"before this reply")
            continue
        ok = [(s, e, ln, w) for s, e, ln, w in syncs if s >= r.dot_at and e <= r.at]
        if store_writes:  # writes traced too: the sync must follow a write of the message's row
            ok = [(s, e, ln, w) for s, e, ln, w in ok if all(
                any(r.dot_at <= t <= s and qid.encode() in data for t, data in store_writes)
                for qid in r.ids.split())]
            if not ok:
                rep.violations.append(
                    f"{where}: no store sync after a write of its queue id to the store begun "
                    f"after its final dot (line {r.dot_line}) ended before this reply")
                continue
        if ok:
            r.proof = f"{ok[0][3]} at line {ok[0][2]}"
            continue
        late = [ln for s, e, ln, _ in syncs if s >= r.dot_at and e > r.at]
        early = [ln for s, e, ln, _ in syncs if s < r.dot_at <= e or e < r.dot_at]
        why = "no sync of the store"
        if late:
            why = f"the first store sync after its dot (line {late[0]}) returned only after it"
        elif early:
            why = f"the last store sync (line {early[-1]}) began before its final dot was read"
        rep.violations.append(f"{where}: {why} (final dot read at line {r.dot_line})")
    return rep


def check(text, store_path=None, pg_port=None):
    """The violations of "every 250 comes after the store was made durable" in a trace."""
    return analyse(text, store_path, pg_port).violations


def load(path):
    """A trace written with -o path (-f: one file, pids on each line) or with -ff (path.PID
    files, merged here by time with their pid put in front of each line)."""
    if os.path.exists(path):
        with open(path, errors="replace") as f:
            return f.read()
    lines = []
    for part in glob.glob(glob.escape(path) + ".*"):
        pid = part.rsplit(".", 1)[1]
        if not pid.isdigit():
            continue
        with open(part, errors="replace") as f:
            lines += [(line.split(" ", 1)[0], n, f"{pid} {line}") for n, line in
                      enumerate(f.read().splitlines())]
    lines.sort()  # by -tt time; a file's own order for equal times
    return "\n".join(line for _, _, line in lines) + "\n"


def without_syncs(text):
    """The same trace as if the server never synced (synchronous=OFF): every fsync/fdatasync
    line, and both halves of split ones, removed."""
    out, dropped = [], set()
    for raw in text.splitlines():
        m = _LINE.match(raw)
        body = m.group(3) if m else ""
        pid = m.group(1) if m else None
        if re.match(r"(fsync|fdatasync)\(", body):
            if body.endswith(_UNFINISHED):
                dropped.add(pid)
            continue
        r = _RESUMED.match(body)
        if r and r.group(1) in SYNCS and pid in dropped:
            dropped.discard(pid)
            continue
        out.append(raw)
    return "\n".join(out) + "\n"
