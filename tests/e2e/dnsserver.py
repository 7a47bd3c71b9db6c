"""dnsserver: real DNS servers for the end-to-end tests, and a tiny stdlib DNS client.

Everything listens on 127.0.0.1:<free high port> (UDP and TCP), inside the test's temp dir, and
never sends a packet beyond the loopback interface.

DnsServer — `unbound -d` answering only from local-zone/local-data (module-config "iterator", no
  trust anchors, no remote-control, no chroot). Unsigned test zones:

      dns = DnsServer(workdir, records=["example.test. 300 IN MX 10 mail.example.test.",
                                        "mail.example.test. 300 IN A 127.0.0.1"],
                      nxdomain_zones=["gone.test."], servfail_names=["broken.test."]).start()
      query(dns.port, "example.test.", "MX").values("MX")   # -> ["10 mail.example.test."]

  What a client sees:
    * a name in `records` -> its data; another type at that name -> NOERROR/NODATA; a name under
      a served zone with no data -> NXDOMAIN. Served zones are `zones=` if given, else the last
      two labels of every owner ("mail.example.test." -> zone "example.test."), type static.
    * `nxdomain_zones` -> NXDOMAIN for the name and everything below it (always_nxdomain).
    * `servfail_names` -> SERVFAIL for the name and everything below it, at once (no wait). How:
      a transparent local-zone lets the query through to the iterator, and a forward-zone sends it
      to a forwarder that is on unbound's do-not-query list (every address is: do-not-query-address
      0.0.0.0/0 and ::/0), so unbound has no usable server and answers SERVFAIL without sending
      anything. A libunbound client forwarding here gets ub_result.rcode == 2, havedata 0,
      nxdomain 0 (and a recursive resolver would see the same SERVFAIL).
    * `refused_names` -> REFUSED (always_refuse); any name outside all of the above -> REFUSED too
      (local-zone "." refuse; unbound's built-in "test." and "invalid." zones are
      switched off with nodefault). libunbound turns a REFUSED from its forwarder into rcode 2
      (SERVFAIL).
    * `drop_names` -> no answer at all (local-zone deny): the client times out (a libunbound
      client keeps retrying on its own schedule: ub_resolve_async + a deadline bounds it).
    * a CNAME is answered alone (unbound does not chase local-data); the client follows it.
  `.address` is "127.0.0.1@PORT", the form ub_ctx_set_fwd() takes. `.queries()` lists the
  (name, type) pairs it was asked (log-queries), `.log()` its log; records can be edited and the
  server `.restart()`ed on the same port.

  NOTE for libunbound clients: unbound (and libunbound) have a built-in local zone "test." (RFC
  6761) that answers NXDOMAIN for every *.test name without asking the forwarder. A libunbound
  context must drop it: ub_ctx_zone_remove(ctx, "test.") after ub_ctx_set_fwd(), or ub_ctx_config()
  with a file holding `server: local-zone: "test." nodefault`. (ub_ctx_set_option("local-zone:",
  "test. nodefault") returns 0 but has no effect in libunbound 1.17.) do-not-query-localhost is
  not needed for a forwarder on 127.0.0.1.

SignedZoneServer — one DNSSEC-signed zone (ldns-keygen KSK+ZSK, ldns-signzone, NSEC) served by
  `nsd -d`. `.trust_anchor()` is "secure.test.\tIN\tDS\t<tag> 13 2 <hex>", for ub_ctx_add_ta() or
  unbound's trust-anchor:. `bogus=` alters records after signing: their RRSIG no longer matches, a
  validating unbound answers SERVFAIL ("validation failure ... signature crypto failed" in its
  log), while nsd itself still serves the altered data with the stale RRSIG. A validating
  libunbound (trust anchor added) reports ub_result.bogus == 1, secure 0, why_bogus "validation
  failure <...>: ECDSA signature verification failed", but rcode 0 and havedata 1 with the
  altered data present: a client must check `bogus`, not just rcode/havedata. (A libunbound
  without the trust anchor, forwarding to a ValidatingResolver, gets rcode 2 instead.)
  Pointing a validator at it (verified in test_infra_selftest.py):
    * libunbound: ub_ctx_set_fwd(ctx, sz.address); ub_ctx_add_ta(ctx, sz.trust_anchor());
      ub_ctx_zone_remove(ctx, "test.")  -> ub_result.secure == 1 for good data, bogus == 1 for bad.
      (Forwarding straight to nsd works: nsd answers the RD queries for its zone and DNSKEY.)
    * unbound daemon: `stub-zone: name: "secure.test." stub-addr: 127.0.0.1@PORT`,
      `trust-anchor: "<trust_anchor()>"`, do-not-query-localhost: no, module-config
      "validator iterator", and, if "test." is left at its built-in default or "." is refused,
      `local-zone: "secure.test." transparent` so client queries reach the iterator.
      ValidatingResolver below does exactly that; query it with dnssec=True or the default
      ad=True and check Response.ad.

ValidatingResolver — `unbound -d` as a (validating) resolver that only knows stub zones: signed
  zones from SignedZoneServers (with their trust anchors) and optional unsigned zones served by a
  DnsServer; so one forwarder address can serve a mix of signed and unsigned names. It can only
  query 127.0.0.0/8 (every other address is on its do-not-query list).

query(port, name, rtype) — stdlib DNS client (UDP, TCP on truncation or tcp=True) returning a
  Response: .rcode ("NOERROR", "NXDOMAIN", "SERVFAIL", ...), .ad/.aa/.tc flags, .answer /
  .authority / .additional lists of RR(name, type, ttl, data) with data in presentation format
  ("10 mail.example.test.", "3 1 1 <hex>", ...), .values(type). Raises DnsTimeout when no answer.
"""
import base64
import ipaddress
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import time

try:
    from harness import wait_until
except ImportError:  # used outside the e2e directory
    def wait_until(pred, timeout=20.0, interval=0.05, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = pred()
            if v:
                return v
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

LOOPBACK = "127.0.0.1"

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28,
         "SRV": 33, "DNAME": 39, "OPT": 41, "DS": 43, "RRSIG": 46, "NSEC": 47, "DNSKEY": 48,
         "NSEC3": 50, "NSEC3PARAM": 51, "TLSA": 52, "CAA": 257, "ANY": 255}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


# ---------------------------------------------------------------------------------------------
# stdlib DNS client
# ---------------------------------------------------------------------------------------------

class DnsTimeout(TimeoutError):
    pass


class RR:
    """One resource record: name (absolute, as received), type ("MX", or "TYPE65534"), ttl, cls,
    data (presentation format, e.g. "10 mail.example.test." or "3 1 1 ab12...")."""

    __slots__ = ("name", "type", "ttl", "cls", "data")

    def __init__(self, name, type, ttl, cls, data):
        self.name, self.type, self.ttl, self.cls, self.data = name, type, ttl, cls, data

    def __repr__(self):
        return f"RR({self.name} {self.ttl} {self.type} {self.data})"

    def __eq__(self, other):
        return isinstance(other, RR) and (self.name.lower(), self.type, self.data) == (
            other.name.lower(), other.type, other.data)

    def __hash__(self):
        return hash((self.name.lower(), self.type, self.data))


class Response:
    """A parsed DNS reply. rcode is a name ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", ...)."""

    def __init__(self, id, flags, rcode, question, answer, authority, additional, edns_do, tcp):
        self.id, self.flags, self.rcode = id, flags, rcode
        self.question = question          # (name, type)
        self.answer, self.authority, self.additional = answer, authority, additional
        self.edns_do = edns_do            # the DO bit in the reply's OPT record
        self.tcp = tcp                    # came over TCP

    ad = property(lambda self: "ad" in self.flags)
    aa = property(lambda self: "aa" in self.flags)
    tc = property(lambda self: "tc" in self.flags)
    ra = property(lambda self: "ra" in self.flags)

    def values(self, rtype, section="answer"):
        """Data strings of the records of `rtype` in a section, e.g. values("MX") -> ["10 mx."]."""
        return [rr.data for rr in getattr(self, section) if rr.type == rtype.upper()]

    def rrsig_covers(self, section="answer"):
        """Types covered by the RRSIGs in a section, e.g. {"TLSA"}."""
        return {rr.data.split()[0] for rr in getattr(self, section) if rr.type == "RRSIG"}

    def __repr__(self):
        return (f"Response({self.rcode} flags={' '.join(sorted(self.flags))} q={self.question} "
                f"answer={self.answer} authority={self.authority})")


def _encode_name(name):
    name = name.rstrip(".")
    out = b""
    if name:
        for label in name.split("."):
            raw = label.encode("idna") if not label.isascii() else label.encode()
            if not 0 < len(raw) < 64:
                raise ValueError(f"bad label in {name!r}")
            out += bytes([len(raw)]) + raw
    return out + b"\0"


def _label_text(raw):
    out = []
    for b in raw:
        c = chr(b)
        if c in ".\\\"();@$ ":
            out.append("\\" + c)
        elif 0x21 <= b <= 0x7e:
            out.append(c)
        else:
            out.append("\\%03d" % b)
    return "".join(out)


def _decode_name(msg, off):
    """Returns (name with trailing dot, offset after the name in the original position)."""
    labels, end, jumps = [], None, 0
    while True:
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            jumps += 1
            if jumps > 64:
                raise ValueError("compression loop")
            continue
        off += 1
        if n == 0:
            break
        labels.append(_label_text(msg[off:off + n]))
        off += n
    return ("." .join(labels) + ".") if labels else ".", (end if end is not None else off)


def _type_bitmap(data):
    types, off = [], 0
    while off + 2 <= len(data):
        window, length = data[off], data[off + 1]
        bits = data[off + 2:off + 2 + length]
        for i, byte in enumerate(bits):
            for bit in range(8):
                if byte & (0x80 >> bit):
                    t = window * 256 + i * 8 + bit
                    types.append(TYPE_NAMES.get(t, f"TYPE{t}"))
        off += 2 + length
    return types


def _sigtime(t):
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(t))


def _rdata_text(msg, off, rdlen, rtype):
    rd = msg[off:off + rdlen]
    if rtype == 1 and rdlen == 4:
        return socket.inet_ntop(socket.AF_INET, rd)
    if rtype == 28 and rdlen == 16:
        return socket.inet_ntop(socket.AF_INET6, rd)
    if rtype in (2, 5, 12, 39):
        return _decode_name(msg, off)[0]
    if rtype == 15:
        return f"{struct.unpack('!H', rd[:2])[0]} {_decode_name(msg, off + 2)[0]}"
    if rtype == 16:
        parts, i = [], 0
        while i < len(rd):
            n = rd[i]
            s = "".join(c if 0x20 <= ord(c) < 0x7f and c not in '"\\' else
                        ("\\" + c if c in '"\\' else "\\%03d" % ord(c))
                        for c in rd[i + 1:i + 1 + n].decode("latin-1"))
            parts.append(f'"{s}"')
            i += 1 + n
        return " ".join(parts)
    if rtype == 6:
        mname, o = _decode_name(msg, off)
        rname, o = _decode_name(msg, o)
        return f"{mname} {rname} " + " ".join(str(x) for x in struct.unpack("!5I", msg[o:o + 20]))
    if rtype == 33:
        prio, weight, port = struct.unpack("!3H", rd[:6])
        return f"{prio} {weight} {port} {_decode_name(msg, off + 6)[0]}"
    if rtype == 52:
        return f"{rd[0]} {rd[1]} {rd[2]} {rd[3:].hex()}"
    if rtype == 43:
        tag, alg, dt = struct.unpack("!HBB", rd[:4])
        return f"{tag} {alg} {dt} {rd[4:].hex()}"
    if rtype == 48:
        flags, proto, alg = struct.unpack("!HBB", rd[:4])
        return f"{flags} {proto} {alg} {base64.b64encode(rd[4:]).decode()}"
    if rtype == 46:
        covered, alg, labels, ottl, exp, inc, tag = struct.unpack("!HBBIIIH", rd[:18])
        signer, o = _decode_name(msg, off + 18)
        sig = base64.b64encode(msg[o:off + rdlen]).decode()
        return (f"{TYPE_NAMES.get(covered, f'TYPE{covered}')} {alg} {labels} {ottl} "
                f"{_sigtime(exp)} {_sigtime(inc)} {tag} {signer} {sig}")
    if rtype == 47:
        nxt, o = _decode_name(msg, off)
        return " ".join([nxt] + _type_bitmap(msg[o:off + rdlen]))
    return f"\\# {rdlen} {rd.hex()}"


def _parse(msg, tcp):
    if len(msg) < 12:
        raise ValueError("short DNS message")
    qid, fl, qd, an, ns, ar = struct.unpack("!6H", msg[:12])
    flags = {n for n, bit in (("qr", 15), ("aa", 10), ("tc", 9), ("rd", 8), ("ra", 7),
                              ("ad", 5), ("cd", 4)) if fl & (1 << bit)}
    rcode = fl & 0xF
    off, question = 12, None
    for _ in range(qd):
        qname, off = _decode_name(msg, off)
        qt, _qc = struct.unpack("!HH", msg[off:off + 4])
        off += 4
        question = (qname, TYPE_NAMES.get(qt, f"TYPE{qt}"))
    sections, edns_do = [], False
    for count in (an, ns, ar):
        rrs = []
        for _ in range(count):
            name, off = _decode_name(msg, off)
            rtype, cls, ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
            off += 10
            if rtype == 41:  # OPT: extended rcode and DO bit live in the TTL field
                rcode |= (ttl >> 24) << 4
                edns_do = bool(ttl & 0x8000)
            else:
                rrs.append(RR(name, TYPE_NAMES.get(rtype, f"TYPE{rtype}"), ttl, cls,
                              _rdata_text(msg, off, rdlen, rtype)))
            off += rdlen
        sections.append(rrs)
    return qid, Response(qid, flags, RCODES.get(rcode, f"RCODE{rcode}"), question, *sections,
                         edns_do=edns_do, tcp=tcp)


def make_query(name, rtype="A", qid=None, rd=True, ad=True, cd=False, dnssec=False, edns=True):
    """The wire form of a query (for tests that want raw bytes)."""
    qid = random.randrange(65536) if qid is None else qid
    t = TYPES[rtype.upper()] if isinstance(rtype, str) else int(rtype)
    fl = (0x0100 if rd else 0) | (0x0020 if ad else 0) | (0x0010 if cd else 0)
    msg = struct.pack("!6H", qid, fl, 1, 0, 0, 1 if edns else 0)
    msg += _encode_name(name) + struct.pack("!HH", t, 1)
    if edns:  # OPT: root name, type 41, udp size 1232, ext rcode 0, version 0, DO flag
        msg += b"\0" + struct.pack("!HHIH", 41, 1232, 0x8000 if dnssec else 0, 0)
    return qid, msg


def _recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("DNS TCP connection closed")
        buf += chunk
    return buf


def query(port, name, rtype="A", host=LOOPBACK, timeout=2.0, tcp=False, dnssec=False, ad=True,
          cd=False, rd=True, tries=2):
    """Asks host:port one question; returns a Response. UDP (falling back to TCP when the reply is
    truncated) or TCP with tcp=True. dnssec=True sets the DO bit (RRSIGs come back); ad=True sets
    AD in the query so a validator reports AD without DO. Total wait bounded by `timeout`;
    raises DnsTimeout if nothing answers (ConnectionRefused on UDP counts as no answer)."""
    deadline = time.monotonic() + timeout
    qid, msg = make_query(name, rtype, rd=rd, ad=ad, cd=cd, dnssec=dnssec)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if not tcp:
        per_try = timeout / max(1, tries)
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            while time.monotonic() < deadline:
                try:
                    s.send(msg)
                except OSError:
                    time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                    continue
                try_end = min(deadline, time.monotonic() + per_try)
                while True:
                    left = try_end - time.monotonic()
                    if left <= 0:
                        break
                    s.settimeout(left)
                    try:
                        data = s.recv(65535)
                    except socket.timeout:
                        break
                    except OSError:  # ICMP port unreachable: nobody listening (yet)
                        time.sleep(min(0.05, max(0.0, try_end - time.monotonic())))
                        break
                    try:
                        rid, resp = _parse(data, False)
                    except (ValueError, IndexError, struct.error):
                        continue
                    if rid != qid:
                        continue
                    if resp.tc:
                        return query(port, name, rtype, host,
                                     max(0.5, deadline - time.monotonic()), True, dnssec, ad, cd,
                                     rd, tries)
                    return resp
        raise DnsTimeout(f"no DNS answer from {host}@{port} for {name} {rtype} in {timeout}s")
    try:
        left = max(0.05, deadline - time.monotonic())
        with socket.create_connection((host, port), timeout=left) as s:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            s.sendall(struct.pack("!H", len(msg)) + msg)
            n = struct.unpack("!H", _recv_exact(s, 2))[0]
            rid, resp = _parse(_recv_exact(s, n), True)
            if rid != qid:
                raise ValueError("DNS TCP reply with the wrong id")
            return resp
    except (socket.timeout, ConnectionError) as e:
        raise DnsTimeout(f"no DNS TCP answer from {host}@{port} for {name} {rtype}: {e}") from e


# ---------------------------------------------------------------------------------------------
# process plumbing shared by the servers
# ---------------------------------------------------------------------------------------------

def free_udp_tcp_port(host=LOOPBACK):
    """A port free for both UDP and TCP on host (a DNS server needs both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free UDP+TCP port")


def _proc_stat(pid):
    """(state, ppid) of a process from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return rest[0], int(rest[1])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid):
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _descendants(pid):
    """Pids of every living descendant of pid."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st and st[0] not in ("Z", "X"):
                parents[int(entry)] = st[1]
    out, frontier = [], {pid}
    while frontier:
        kids = {p for p, pp in parents.items() if pp in frontier and p not in out}
        out += sorted(kids)
        frontier = kids
    return out


def _abs(name):
    name = name.strip()
    if not name.endswith("."):
        raise ValueError(f"DNS names must be absolute (end with a dot): {name!r}")
    return name.lower()


def _quote(s):
    if '"' in s:
        if "'" in s:
            raise ValueError(f"record has both quote kinds: {s!r}")
        return f"'{s}'"
    return f'"{s}"'


class _Daemon:
    """A foreground DNS daemon writing to <workdir>/<name>.log, started on a free port (retried
    on a new port if the bind fails), stopped with SIGTERM then SIGKILL, every wait bounded."""

    exe = None
    ready_timeout = 20.0

    def __init__(self, workdir, name, port, prefix):
        self.dir = os.path.abspath(workdir)
        self.fixed_port = port is not None
        self.port = port or free_udp_tcp_port()
        self.name = name or f"{prefix}-{self.port}"
        self.log_path = os.path.join(self.dir, f"{name}.log")
        self.conf = os.path.join(self.dir, f"{name}.conf")
        self.pidfile = os.path.join(self.dir, f"{name}.pid")
        self.proc = None
        self._logf = None

    @property
    def address(self):
        """"127.0.0.1@PORT" — what ub_ctx_set_fwd() and unbound's forward-addr/stub-addr take."""
        return f"{LOOPBACK}@{self.port}"

    def _command(self):
        raise NotImplementedError

    def _write_config(self):
        raise NotImplementedError

    def _probe(self):
        """Name and type to ask when waiting for readiness; any parsed answer means ready."""
        return ".", "SOA"

    def start(self):
        for attempt in range(3):
            self._write_config()
            self._logf = open(self.log_path, "ab")
            log_start = self._logf.tell()
            self.proc = subprocess.Popen(self._command(), stdout=self._logf,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.dir)
            name, rtype = self._probe()

            def ready():
                if self.proc.poll() is not None:
                    return True
                try:
                    query(self.port, name, rtype, timeout=0.3, tries=1)
                    return True
                except (DnsTimeout, OSError):
                    return False

            try:
                wait_until(ready, self.ready_timeout, what=f"{self.name} to answer on {self.port}")
            except AssertionError:
                self.stop()
                raise AssertionError(f"{self.name} did not answer in {self.ready_timeout}s:\n"
                                     + self.log())
            if self.proc.poll() is None:
                return self
            self._close_log()
            with open(self.log_path, "rb") as f:
                f.seek(log_start)
                text = f.read().decode("utf-8", "replace")
            if not self.fixed_port and re.search(r"(?i)bind|address already in use", text):
                self.port = free_udp_tcp_port()
                continue
            raise AssertionError(f"{self.name} exited at start ({self.proc.returncode}):\n{text}")
        raise AssertionError(f"{self.name} could not bind a port:\n{self.log()}")

    def pids(self):
        """The daemon's pid and those of its living children (empty when stopped)."""
        if not self.running():
            return []
        return [self.proc.pid] + _descendants(self.proc.pid)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL after `timeout`; also waits for (and if need be kills, by pid)
        the daemon's forked children (nsd's server and xfrd processes)."""
        if self.proc and self.proc.poll() is None:
            kids = _descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            deadline = time.monotonic() + 5
            while kids and time.monotonic() < deadline:
                kids = [k for k in kids if _alive(k)]
                time.sleep(0.02)
            for k in kids:
                try:
                    os.kill(k, signal.SIGKILL)
                except OSError:
                    pass
        self._close_log()
        return self.proc.returncode if self.proc else None

    def restart(self):
        """Stops, rewrites the config from the current attributes, starts on the same port."""
        self.stop()
        self.fixed_port = True
        return self.start()

    def _close_log(self):
        if self._logf:
            self._logf.close()
            self._logf = None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _unbound_common(d, port, verbosity):
    return [
        "server:",
        f"  interface: {LOOPBACK}@{port}",
        f"  port: {port}",
        "  do-ip4: yes", "  do-ip6: no", "  do-udp: yes", "  do-tcp: yes",
        '  chroot: ""', '  username: ""',
        f'  directory: "{d.dir}"',
        f'  pidfile: "{d.pidfile}"',
        '  logfile: ""', "  use-syslog: no", "  log-time-ascii: yes",
        f"  verbosity: {verbosity}",
        "  log-queries: yes", "  log-servfail: yes",
        "  num-threads: 1", "  so-reuseport: no",
        "  msg-cache-size: 1m", "  rrset-cache-size: 1m", "  key-cache-size: 1m",
        "  neg-cache-size: 256k", "  infra-cache-numhosts: 100",
        "  outgoing-range: 32", "  num-queries-per-thread: 64", "  incoming-num-tcp: 16",
        "  access-control: 127.0.0.0/8 allow",
        "  qname-minimisation: no",
        # Drop the built-in RFC 6761 zones the tests use, so they follow this config alone.
        '  local-zone: "test." nodefault', '  local-zone: "invalid." nodefault',
    ]


class DnsServer(_Daemon):
    """unbound serving unsigned test zones from local-data. See the module docstring for what a
    client sees for each kind of name."""

    exe = "unbound"

    def __init__(self, workdir, records=(), nxdomain_zones=(), servfail_names=(), refused_names=(),
                 drop_names=(), zones=None, port=None, name=None, verbosity=1, extra_conf="",
                 auto_soa=True):
        super().__init__(workdir, name, port, "dns")
        self.auto_soa = auto_soa
        self.records = list(records)
        self.nxdomain_zones = [_abs(n) for n in nxdomain_zones]
        self.servfail_names = [_abs(n) for n in servfail_names]
        self.refused_names = [_abs(n) for n in refused_names]
        self.drop_names = [_abs(n) for n in drop_names]
        self.zones = None if zones is None else [_abs(z) for z in zones]
        self.verbosity = verbosity
        self.extra_conf = extra_conf

    def served_zones(self):
        """The static local-zones: `zones` if given, else the last two labels of every owner."""
        if self.zones is not None:
            return list(self.zones)
        out = []
        for rec in self.records:
            owner = _abs(rec.split()[0])
            labels = owner.rstrip(".").split(".")
            z = ".".join(labels[-2:]) + "."
            if z not in out:
                out.append(z)
        return out

    def _write_config(self):
        lines = _unbound_common(self, self.port, self.verbosity) + [
            '  module-config: "iterator"',
            "  do-not-query-localhost: yes",
            # Nothing may leave this server: every address is on the do-not-query list.
            "  do-not-query-address: 0.0.0.0/0",
            "  do-not-query-address: ::0/0",
            "  local-zone: \".\" refuse",
        ]
        have_soa = {_abs(r.split()[0]) for r in self.records
                    if "SOA" in (t.upper() for t in r.split()[1:4])}
        for z in self.served_zones():
            lines.append(f'  local-zone: "{z}" static')
            if self.auto_soa and z not in have_soa:  # so NXDOMAIN/NODATA carry an SOA
                lines.append(f'  local-data: "{z} 300 IN SOA ns.{z} hostmaster.{z} 1 3600 600 '
                             f'86400 300"')
        for rec in self.records:
            _abs(rec.split()[0])
            lines.append(f"  local-data: {_quote(rec.strip())}")
        for n in self.nxdomain_zones:
            lines.append(f'  local-zone: "{n}" always_nxdomain')
        for n in self.refused_names:
            lines.append(f'  local-zone: "{n}" always_refuse')
        for n in self.drop_names:
            lines.append(f'  local-zone: "{n}" deny')
        for n in self.servfail_names:
            lines.append(f'  local-zone: "{n}" transparent')
        if self.extra_conf:
            lines.append(self.extra_conf)
        for n in self.servfail_names:
            # The forwarder is on the do-not-query list: no usable server -> instant SERVFAIL.
            lines += ["forward-zone:", f'  name: "{n}"', f"  forward-addr: {LOOPBACK}@9",
                      "  forward-first: no"]
        lines += ["remote-control:", "  control-enable: no"]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _command(self):
        return [shutil.which("unbound") or "/usr/sbin/unbound", "-d", "-c", self.conf]

    def queries(self):
        """(name, type) of every query the server logged so far (log-queries), in order."""
        rx = re.compile(r"info: \S+ (\S+) (\S+) IN$", re.M)
        return [(n.lower(), t) for n, t in rx.findall(self.log())]


# ---------------------------------------------------------------------------------------------
# DNSSEC: signed zone on nsd
# ---------------------------------------------------------------------------------------------

def _corrupt_rdata(rtype, rdata):
    """A different but well-formed rdata of the same type (so the old RRSIG no longer matches)."""
    if rtype == "A":
        a = ipaddress.IPv4Address(rdata)
        return str(ipaddress.IPv4Address(int(a) ^ 1))
    if rtype == "AAAA":
        a = ipaddress.IPv6Address(rdata)
        return str(ipaddress.IPv6Address(int(a) ^ 1))
    if rtype == "TLSA":
        u, s, m, data = rdata.split(None, 3)
        data = data.replace(" ", "")
        last = "0" if data[-1].lower() != "0" else "1"
        return f"{u} {s} {m} {data[:-1]}{last}"
    if rtype == "MX":
        pref, host = rdata.split(None, 1)
        return f"{(int(pref) + 1) % 65536} {host}"
    if rtype == "TXT":
        return rdata[:-1] + 'x"' if rdata.endswith('"') else rdata + "x"
    if rtype in ("CNAME", "NS", "PTR"):
        return "bogus-" + rdata
    raise ValueError(f"cannot make a bogus {rtype} record")


class SignedZoneServer(_Daemon):
    """nsd serving one zone signed with a fresh KSK+ZSK (ldns-keygen, ldns-signzone, NSEC).

    records: zone-file lines with absolute owners inside `zone`, e.g.
      "_25._tcp.mail.secure.test. 300 IN TLSA 3 1 1 <hex>". SOA, NS ns.<zone> and ns.<zone> A
      127.0.0.1 are added unless the records carry their own SOA / NS.
    bogus: False; True = alter every TLSA, A, AAAA, MX, TXT and CNAME record from `records`
      after signing (the apex NS/SOA/DNSKEY and ns.<zone> stay valid, so the zone itself still
      validates); or an iterable of owner names or (owner, type) pairs to alter only those.
    Keys and signing happen in the constructor, so trust_anchor() is known before start()."""

    exe = "nsd"
    BOGUS_TYPES = ("TLSA", "A", "AAAA", "MX", "TXT", "CNAME")

    def __init__(self, workdir, zone="secure.test.", records=(), bogus=False,
                 algorithm="ECDSAP256SHA256", port=None, name=None, ttl=300, verbosity=1,
                 valid_days=30):
        self.zone = _abs(zone)
        super().__init__(workdir, name, port, "nsd")
        self.zdir = os.path.join(self.dir, self.name + "-zone")
        os.makedirs(self.zdir, exist_ok=True)
        self.records = list(records)
        self.ttl, self.verbosity, self.algorithm = ttl, verbosity, algorithm
        self.zonefile = os.path.join(self.zdir, self.zone + "zone")
        self.signed = self.zonefile + ".signed"
        self.bogus_changes = []   # (owner, type, old rdata, new rdata)
        self._keygen()
        self._sign(valid_days)
        self._apply_bogus(bogus)

    # -- keys and signing
    def _run(self, args):
        r = subprocess.run(args, cwd=self.zdir, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r.stdout.strip()

    def _keygen(self):
        bits = [] if self.algorithm.startswith(("ECDSA", "ED")) else ["-b", "2048"]
        # ldns-keygen prints the base name K<zone>+<alg>+<tag> and writes .key/.private (+.ds)
        self.ksk = os.path.join(self.zdir, self._run(
            ["ldns-keygen", "-a", self.algorithm, *bits, "-k", self.zone]))
        zbits = [] if not bits else ["-b", "1024"]
        self.zsk = os.path.join(self.zdir, self._run(
            ["ldns-keygen", "-a", self.algorithm, *zbits, self.zone]))

    def _zone_text(self):
        z = self.zone
        recs = [r.strip() for r in self.records]
        for r in recs:
            owner = _abs(r.split()[0])
            if not (owner == z or owner.endswith("." + z)):
                raise ValueError(f"{owner} is not inside {z}")
        owners_types = {(_abs(r.split()[0]), tok.upper()) for r in recs for tok in r.split()[1:4]}
        lines = [f"$TTL {self.ttl}"]
        if (z, "SOA") not in owners_types:
            lines.append(f"{z} {self.ttl} IN SOA ns.{z} hostmaster.{z} 1 3600 600 86400 {self.ttl}")
        if (z, "NS") not in owners_types:
            lines.append(f"{z} {self.ttl} IN NS ns.{z}")
            if (f"ns.{z}", "A") not in owners_types:
                lines.append(f"ns.{z} {self.ttl} IN A 127.0.0.1")
        return "\n".join(lines + recs) + "\n"

    def _sign(self, valid_days):
        with open(self.zonefile, "w") as f:
            f.write(self._zone_text())
        now = int(time.time())
        inception = time.strftime("%Y%m%d%H%M%S", time.gmtime(now - 3600))  # allow clock skew
        expiration = time.strftime("%Y%m%d%H%M%S", time.gmtime(now + valid_days * 86400))
        self._run(["ldns-signzone", "-i", inception, "-e", expiration, "-f", self.signed,
                   self.zonefile, os.path.basename(self.zsk), os.path.basename(self.ksk)])

    def _apply_bogus(self, bogus):
        if not bogus:
            return
        if bogus is True:
            user = {(_abs(r.split()[0]), t) for r in self.records for t in self.BOGUS_TYPES
                    if t in [x.upper() for x in r.split()[1:4]]}
            wanted = lambda owner, rtype: (owner, rtype) in user
        else:
            names, pairs = set(), set()
            for item in bogus:
                if isinstance(item, str):
                    names.add(_abs(item))
                else:
                    pairs.add((_abs(item[0]), item[1].upper()))
            wanted = lambda owner, rtype: ((owner in names and rtype in self.BOGUS_TYPES)
                                           or (owner, rtype) in pairs)
        out = []
        with open(self.signed) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 5 and not line.startswith(";"):
                    owner, rtype = parts[0].lower(), parts[3].upper()
                    if wanted(owner, rtype):
                        new = _corrupt_rdata(rtype, parts[4])
                        self.bogus_changes.append((owner, rtype, parts[4], new))
                        parts[4] = new
                        line = "\t".join(parts) + "\n"
                out.append(line)
        if not self.bogus_changes:
            raise ValueError(f"bogus={bogus!r} matched no record in {self.zone}")
        with open(self.signed, "w") as f:
            f.writelines(out)

    # -- trust anchors
    def trust_anchor(self, kind="DS"):
        """One line for ub_ctx_add_ta() / unbound trust-anchor:, e.g.
        "secure.test.\\tIN\\tDS\\t12345 13 2 <hex>" (kind="DS", SHA-256 digest) or the KSK's
        "secure.test.\\tIN\\tDNSKEY\\t257 3 13 <base64>" (kind="DNSKEY")."""
        if kind.upper() == "DS":
            out = self._run(["ldns-key2ds", "-n", "-2", os.path.basename(self.ksk) + ".key"])
            line = out.splitlines()[0]
        elif kind.upper() == "DNSKEY":
            with open(self.ksk + ".key") as f:
                line = f.read().split(";")[0]
        else:
            raise ValueError(kind)
        # "secure.test.\t3600\tIN\tDS\t..." -> drop the TTL so it reads "secure.test. IN DS ..."
        parts = line.strip().split("\t")
        if len(parts) > 1 and parts[1].isdigit():
            parts.pop(1)
        return "\t".join(parts)

    def trust_anchor_file(self, path=None, kind="DS"):
        """Writes trust_anchor() to a file (for unbound trust-anchor-file: or
        ub_ctx_add_ta_file()); returns its path."""
        path = path or os.path.join(self.dir, f"{self.name}.ta")
        with open(path, "w") as f:
            f.write(self.trust_anchor(kind) + "\n")
        return path

    def signed_zone(self):
        """The signed zone file's text (after any bogus changes)."""
        with open(self.signed) as f:
            return f.read()

    # -- daemon
    def _write_config(self):
        d = self.dir
        lines = [
            "server:",
            f"  ip-address: {LOOPBACK}@{self.port}",
            f"  port: {self.port}",
            "  do-ip4: yes", "  do-ip6: no",
            '  username: ""', '  chroot: ""',
            f'  zonesdir: "{self.zdir}"',
            f'  pidfile: "{self.pidfile}"',
            '  database: ""',
            f'  zonelistfile: "{os.path.join(self.zdir, "zone.list")}"',
            f'  xfrdfile: "{os.path.join(self.zdir, "xfrd.state")}"',
            f'  xfrdir: "{self.zdir}"',
            f'  logfile: "{self.log_path}"',
            "  server-count: 1", "  reuseport: no",
            f"  verbosity: {self.verbosity}",
            "  hide-version: yes",
            "  tcp-count: 16",
            "remote-control:",
            "  control-enable: no",
            "zone:",
            f'  name: "{self.zone}"',
            f'  zonefile: "{self.signed}"',
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _command(self):
        return [shutil.which("nsd") or "/usr/sbin/nsd", "-d", "-c", self.conf]

    def _probe(self):
        return self.zone, "SOA"

    def start(self):
        super().start()

        def loaded():  # nsd may answer before the zone is loaded; wait for the real SOA
            if not self.running():
                return True
            try:
                return query(self.port, self.zone, "SOA", timeout=0.5).rcode == "NOERROR"
            except (DnsTimeout, OSError):
                return False

        try:
            wait_until(loaded, 10.0, what=f"nsd to load {self.zone}")
        except AssertionError:
            self.stop()
            raise AssertionError(f"nsd did not serve {self.zone}:\n{self.log()}")
        if not self.running():
            raise AssertionError(f"nsd exited:\n{self.log()}")
        return self


# ---------------------------------------------------------------------------------------------
# A validating resolver over stub zones
# ---------------------------------------------------------------------------------------------

# Every IPv4 block except 127.0.0.0/8: the resolver may only talk to the loopback servers.
_NOT_LOOPBACK = ["0.0.0.0/2", "64.0.0.0/3", "96.0.0.0/4", "112.0.0.0/5", "120.0.0.0/6",
                 "124.0.0.0/7", "126.0.0.0/8", "128.0.0.0/1"]


class ValidatingResolver(_Daemon):
    """unbound as a resolver that knows only stub zones on loopback servers.

    signed: SignedZoneServers — stub-zone to each, with its trust anchor (validated).
    unsigned: {zone: DnsServer or "127.0.0.1@PORT"} — stub zones without a trust anchor
      (answers come back without AD: insecure).
    validate=False runs module-config "iterator" (a plain router, no AD, no bogus SERVFAIL).
    Names outside the stub zones get REFUSED."""

    exe = "unbound"

    def __init__(self, workdir, signed=(), unsigned=None, validate=True, port=None, name=None,
                 verbosity=1, extra_conf=""):
        super().__init__(workdir, name, port, "resolver")
        self.signed = list(signed)
        self.unsigned = dict(unsigned or {})
        self.validate = validate
        self.verbosity = verbosity
        self.extra_conf = extra_conf

    def _write_config(self):
        lines = _unbound_common(self, self.port, self.verbosity) + [
            f'  module-config: "{"validator iterator" if self.validate else "iterator"}"',
            "  do-not-query-localhost: no",
            "  val-log-level: 2",
            "  local-zone: \".\" refuse",
        ] + [f"  do-not-query-address: {b}" for b in _NOT_LOOPBACK] + [
            "  do-not-query-address: ::0/0"]
        stubs = []
        for sz in self.signed:
            lines.append(f'  local-zone: "{sz.zone}" transparent')
            if self.validate:
                lines.append(f"  trust-anchor: \"{sz.trust_anchor().replace(chr(9), ' ')}\"")
            stubs.append((sz.zone, sz.address))
        for zone, server in self.unsigned.items():
            zone = _abs(zone)
            lines.append(f'  local-zone: "{zone}" transparent')
            if self.validate:
                lines.append(f'  domain-insecure: "{zone}"')
            stubs.append((zone, server if isinstance(server, str) else server.address))
        if self.extra_conf:
            lines.append(self.extra_conf)
        for zone, addr in stubs:
            lines += ["stub-zone:", f'  name: "{zone}"', f"  stub-addr: {addr}"]
        lines += ["remote-control:", "  control-enable: no"]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _command(self):
        return [shutil.which("unbound") or "/usr/sbin/unbound", "-d", "-c", self.conf]


# ---------------------------------------------------------------------------------------------
# What a libunbound client sees (the system libunbound through ctypes; optional)
# ---------------------------------------------------------------------------------------------

def libunbound_available():
    try:
        import ctypes
        ctypes.CDLL("libunbound.so.8")
        return True
    except OSError:
        return False


def ub_resolve(forwarder, name, rtype="A", trust_anchors=(), drop_test_zone=True, timeout=15.0):
    """Resolves one name with a fresh libunbound context forwarding to `forwarder`
    ("127.0.0.1@PORT"), with optional trust anchors (ub_ctx_add_ta lines). drop_test_zone removes
    libunbound's built-in "test." local zone (ub_ctx_zone_remove). Asynchronous resolve polled
    until `timeout` (then cancelled, raises DnsTimeout). Returns a dict: rcode (int), havedata,
    nxdomain, secure, bogus, why_bogus, data (list of raw rdata bytes), seconds."""
    import ctypes

    class UbResult(ctypes.Structure):
        _fields_ = [("qname", ctypes.c_char_p), ("qtype", ctypes.c_int),
                    ("qclass", ctypes.c_int), ("data", ctypes.POINTER(ctypes.c_void_p)),
                    ("len", ctypes.POINTER(ctypes.c_int)), ("canonname", ctypes.c_char_p),
                    ("rcode", ctypes.c_int), ("answer_packet", ctypes.c_void_p),
                    ("answer_len", ctypes.c_int), ("havedata", ctypes.c_int),
                    ("nxdomain", ctypes.c_int), ("secure", ctypes.c_int), ("bogus", ctypes.c_int),
                    ("why_bogus", ctypes.c_char_p), ("was_ratelimited", ctypes.c_int),
                    ("ttl", ctypes.c_int)]

    Callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(UbResult))
    lib = ctypes.CDLL("libunbound.so.8")
    vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    lib.ub_ctx_create.restype = vp
    lib.ub_strerror.restype = cp
    lib.ub_strerror.argtypes = [ci]
    for fn, args in (("ub_ctx_set_fwd", [vp, cp]), ("ub_ctx_add_ta", [vp, cp]),
                     ("ub_ctx_zone_remove", [vp, cp]), ("ub_ctx_async", [vp, ci]),
                     ("ub_ctx_delete", [vp]), ("ub_poll", [vp]), ("ub_process", [vp]),
                     ("ub_cancel", [vp, ci]), ("ub_resolve_free", [ctypes.POINTER(UbResult)]),
                     ("ub_resolve_async", [vp, cp, ci, ci, vp, Callback, ctypes.POINTER(ci)])):
        getattr(lib, fn).argtypes = args
    out = {}

    def on_result(_mydata, err, result):
        if err:
            out["error"] = lib.ub_strerror(err).decode()
            return
        r = result.contents
        data, i = [], 0
        while r.data and r.data[i]:
            data.append(ctypes.string_at(r.data[i], r.len[i]))
            i += 1
        out.update(rcode=r.rcode, havedata=r.havedata, nxdomain=r.nxdomain, secure=r.secure,
                   bogus=r.bogus, why_bogus=r.why_bogus.decode() if r.why_bogus else None,
                   data=data)
        lib.ub_resolve_free(result)

    cb = Callback(on_result)
    ctx = lib.ub_ctx_create()
    if not ctx:
        raise RuntimeError("ub_ctx_create failed")
    try:
        def check(rc, what):
            if rc != 0:
                raise RuntimeError(f"{what}: {lib.ub_strerror(rc).decode()}")
        check(lib.ub_ctx_async(ctx, 1), "ub_ctx_async")  # threads, not a forked process
        check(lib.ub_ctx_set_fwd(ctx, forwarder.encode()), "ub_ctx_set_fwd")
        for ta in trust_anchors:
            check(lib.ub_ctx_add_ta(ctx, ta.encode()), "ub_ctx_add_ta")
        if drop_test_zone:
            check(lib.ub_ctx_zone_remove(ctx, b"test."), "ub_ctx_zone_remove")
        t = TYPES[rtype.upper()] if isinstance(rtype, str) else int(rtype)
        qid = ctypes.c_int()
        t0 = time.monotonic()
        check(lib.ub_resolve_async(ctx, name.encode(), t, 1, None, cb, ctypes.byref(qid)),
              "ub_resolve_async")
        while not out and time.monotonic() - t0 < timeout:
            if lib.ub_poll(ctx):
                check(lib.ub_process(ctx), "ub_process")
            else:
                time.sleep(0.005)
        if not out:
            lib.ub_cancel(ctx, qid.value)
            raise DnsTimeout(f"libunbound: no answer for {name} {rtype} in {timeout}s")
        if "error" in out:
            raise RuntimeError(f"libunbound: {out['error']}")
        out["seconds"] = time.monotonic() - t0
        return out
    finally:
        lib.ub_ctx_delete(ctx)
