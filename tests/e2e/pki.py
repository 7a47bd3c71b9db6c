"""pki: a throwaway certificate authority for the TLS / DANE end-to-end tests, made with the
`openssl` command line (OpenSSL 3). Keys are ECDSA P-256 (key_type="ec", the default) or RSA 2048
(key_type="rsa"); certificates are valid for 30 days from now unless told otherwise.

    ca = TestCA(workdir)                                   # ca.cert, ca.key
    leaf = ca.issue(["mail.example.test"], ip="127.0.0.1") # Issued(cert, key, chain)
    tlsa = tlsa_rdata(leaf.cert)                           # "3 1 1 <sha256 of the SPKI>"
    ss = ca.self_signed("mx.example.test")                 # not signed by the CA

`chain` is the leaf followed by the CA certificate (what a server presents); `cert` is the leaf
alone. TLSA matching data: spki_sha256() for "x 1 1", cert_sha256() for "x 0 1".
"""
import base64
import collections
import hashlib
import ipaddress
import os
import re
import secrets
import subprocess

Issued = collections.namedtuple("Issued", "cert key chain")

_PEM_RX = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s+(.*?)-----END \1-----", re.S)


def _openssl(*args, cwd=None, input=None):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=60,
                       input=input)
    if r.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed ({r.returncode}):\n"
                             + (r.stdout + r.stderr).decode("utf-8", "replace"))
    return r.stdout


def pem_blocks(text, kind=None):
    """DER bytes of each PEM block in text (of one kind, e.g. "CERTIFICATE", if given)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    return [base64.b64decode("".join(body.split())) for k, body in _PEM_RX.findall(text)
            if kind is None or k == kind]


def cert_der(cert_path):
    """DER of the first certificate in a PEM file."""
    with open(cert_path) as f:
        blocks = pem_blocks(f.read(), "CERTIFICATE")
    if not blocks:
        raise ValueError(f"no certificate in {cert_path}")
    return blocks[0]


def spki_der(cert_path):
    """DER SubjectPublicKeyInfo of the (first) certificate in cert_path."""
    return pem_blocks(_openssl("x509", "-in", cert_path, "-noout", "-pubkey"), "PUBLIC KEY")[0]


def spki_sha256(cert_path):
    """Hex SHA-256 of the DER SubjectPublicKeyInfo: the data of a TLSA x 1 1 record."""
    return hashlib.sha256(spki_der(cert_path)).hexdigest()


def cert_sha256(cert_path):
    """Hex SHA-256 of the whole DER certificate: the data of a TLSA x 0 1 record."""
    return hashlib.sha256(cert_der(cert_path)).hexdigest()


def tlsa_rdata(cert_path, usage=3, selector=1, matching=1):
    """TLSA rdata text for a certificate, e.g. "3 1 1 <hex>". selector 0 = whole cert,
    1 = SPKI; matching 0 = full DER, 1 = SHA-256, 2 = SHA-512."""
    der = cert_der(cert_path) if selector == 0 else spki_der(cert_path)
    data = {0: der.hex(), 1: hashlib.sha256(der).hexdigest(),
            2: hashlib.sha512(der).hexdigest()}[matching]
    return f"{usage} {selector} {matching} {data}"


def tlsa_record(host, cert_path, port=25, usage=3, selector=1, matching=1, ttl=300):
    """A whole zone-file line: "_25._tcp.<host>. 300 IN TLSA 3 1 1 <hex>"."""
    host = host.rstrip(".") + "."
    return f"_{port}._tcp.{host} {ttl} IN TLSA {tlsa_rdata(cert_path, usage, selector, matching)}"


class TestCA:
    """A CA key + self-signed CA certificate in <workdir>/<name>/, issuing leaf certificates."""

    __test__ = False  # not a test case, whatever a collector thinks of the name

    def __init__(self, workdir, name="ca", common_name="backupmx test CA", key_type="ec",
                 days=30):
        self.dir = os.path.join(os.path.abspath(workdir), name)
        os.makedirs(self.dir, exist_ok=True)
        self.key_type, self.days = key_type, days
        self.key = os.path.join(self.dir, "ca.key")
        self.cert = os.path.join(self.dir, "ca.pem")
        self._n = 0
        self._genkey(self.key, key_type)
        cnf = self._write(os.path.join(self.dir, "ca.cnf"), "\n".join([
            "[req]", "distinguished_name = dn", "prompt = no", "x509_extensions = v3_ca",
            "[dn]", f"CN = {common_name}", "O = backupmx tests",
            "[v3_ca]", "basicConstraints = critical,CA:TRUE",
            "keyUsage = critical,keyCertSign,cRLSign",
            "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid:always", ""]))
        _openssl("req", "-new", "-x509", "-config", cnf, "-key", self.key, "-sha256",
                 "-days", str(days), "-set_serial", self._serial(), "-out", self.cert)

    # -- helpers
    @staticmethod
    def _write(path, text):
        with open(path, "w") as f:
            f.write(text)
        return path

    @staticmethod
    def _serial():
        return "0x1" + secrets.token_hex(15)  # positive, 124 bits, never a leading zero

    @staticmethod
    def _genkey(path, key_type):
        if key_type == "ec":
            _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-out", path)
        elif key_type == "rsa":
            _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                     "-out", path)
        else:
            raise ValueError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")
        os.chmod(path, 0o600)

    @staticmethod
    def _san(hostnames, ip):
        names = [hostnames] if isinstance(hostnames, str) else list(hostnames)
        ips = [] if ip is None else ([ip] if isinstance(ip, str) else list(ip))
        parts = [f"DNS:{h.rstrip('.')}" for h in names]
        parts += [f"IP:{ipaddress.ip_address(a)}" for a in ips]
        if not parts:
            raise ValueError("a certificate needs at least one hostname or IP")
        return names, ",".join(parts)

    def _leaf_ext(self, san, key_type):
        usage = "digitalSignature" + (",keyEncipherment" if key_type == "rsa" else "")
        return "\n".join([
            "[req]", "distinguished_name = dn", "prompt = no", "[dn]", "CN = unused",
            "[v3_leaf]", "basicConstraints = critical,CA:FALSE", f"keyUsage = critical,{usage}",
            "extendedKeyUsage = serverAuth,clientAuth", f"subjectAltName = {san}",
            "subjectKeyIdentifier = hash", ""])

    def _paths(self, label):
        self._n += 1
        safe = re.sub(r"[^A-Za-z0-9.-]", "_", label)[:60] or "leaf"
        base = os.path.join(self.dir, f"{self._n:02d}-{safe}")
        return base + ".pem", base + ".key", base + "-chain.pem", base + ".cnf", base + ".csr"

    # -- API
    def issue(self, hostnames, ip=None, key_type=None, days=None, common_name=None):
        """A leaf signed by this CA with DNS SANs `hostnames` (str or list) and IP SANs `ip`
        (str or list). Returns Issued(cert, key, chain): leaf PEM, its key, leaf+CA PEM."""
        key_type = key_type or self.key_type
        names, san = self._san(hostnames, ip)
        cn = common_name or (names[0].rstrip(".") if names else str(ip))
        cert, key, chain, cnf, csr = self._paths(cn)
        self._genkey(key, key_type)
        self._write(cnf, self._leaf_ext(san, key_type))
        _openssl("req", "-new", "-config", cnf, "-key", key, "-subj", f"/CN={cn}", "-out", csr)
        _openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key, "-sha256",
                 "-set_serial", self._serial(), "-days", str(days or self.days),
                 "-extfile", cnf, "-extensions", "v3_leaf", "-out", cert)
        with open(cert) as a, open(self.cert) as b, open(chain, "w") as out:
            out.write(a.read() + b.read())
        return Issued(cert, key, chain)

    def self_signed(self, hostname, ip=None, key_type=None, days=None):
        """A self-signed leaf (not issued by this CA) for `hostname`: Issued(cert, key, chain)
        with chain == cert."""
        key_type = key_type or self.key_type
        _, san = self._san(hostname, ip)
        cn = hostname.rstrip(".")
        cert, key, _chain, cnf, _csr = self._paths("self-" + cn)
        self._genkey(key, key_type)
        self._write(cnf, self._leaf_ext(san, key_type))
        _openssl("req", "-new", "-x509", "-config", cnf, "-extensions", "v3_leaf", "-key", key,
                 "-subj", f"/CN={cn}", "-sha256", "-set_serial", self._serial(),
                 "-days", str(days or self.days), "-out", cert)
        return Issued(cert, key, cert)

    spki_sha256 = staticmethod(spki_sha256)
    cert_sha256 = staticmethod(cert_sha256)
    tlsa_rdata = staticmethod(tlsa_rdata)
    tlsa_record = staticmethod(tlsa_record)
