"""Every configuration key the documentation names is one that `backupmx check-config` takes.

Read from the docs themselves, so a key documented later is checked too: each ```toml block of
README.md and docs/fleet.md as it stands, and each key the README's prose names (backquoted words
in "Configuration" and "Abuse defences", `smtp.x` written with its table), with a sample value
kept here. A documented key check-config refuses ("unknown key"), or one with no sample value
here, fails the test.
"""
import os
import re
import subprocess

from harness import BIN, E2ETest, main

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")

# A valid value for each key the prose names, and the table it lives in (where the prose does not
# say "table.key").
SAMPLES = {
    "recipients": ("policy", '"verify"'),
    "recipient_list": ("policy", '["*@example.test"]'),
    "recipient_file": ("policy", None),  # a file: made by the test
    "verify_unknown": ("policy", '"accept"'),
    "verify_positive_ttl": ("policy", '"28d"'),
    "verify_negative_ttl": ("policy", '"1h"'),
    "greylisting": ("policy", "true"),
    "greylist_delay": ("policy", '"5m"'),
    "greylist_expiry": ("policy", '"24h"'),
    "greylist_allow_ttl": ("policy", '"35d"'),
    "dnsbl": ("policy", '["zen.spamhaus.org*3", "list.dnswl.org=127.0.0.2*-5"]'),
    "dnsbl_threshold": ("policy", "3"),
    "dnswl_threshold": ("policy", "-1"),
    "spf": ("policy", "true"),
    "client_connections": ("policy", "50"),
    "subnet_connections": ("policy", "150"),
    "connection_rate": ("policy", "120"),
    "message_rate": ("policy", "600"),
    "recipient_rate": ("policy", "3000"),
    "limit_exceptions": ("policy", '["127.0.0.0/8"]'),
    "milters": ("policy", '["inet:127.0.0.1:11332"]'),
    "milter_default_action": ("policy", '"tempfail"'),
    "milter_connect_timeout": ("policy", '"30s"'),
    "milter_command_timeout": ("policy", '"30s"'),
    "milter_content_timeout": ("policy", '"5m"'),
    "greet_pause": ("policy", '"1s"'),
    "helo_syntax": ("policy", "true"),
    "max_errors": ("smtp", "20"),
    "max_junk_commands": ("smtp", "100"),
    "command_timeout": ("smtp", '"5m"'),
    "max_message_size": ("smtp", "52428800"),
    "retry_min": ("queue", '"1m"'),
    "retry_max": ("queue", '"30m"'),
    "probe_interval": ("queue", '"30s"'),
    "max_concurrency": ("queue", "10"),
    "initial_concurrency": ("queue", "2"),
    "max_age": ("queue", '"14d"'),
    "relayhost": ("queue", '"127.0.0.1:2527"'),
    "control_socket": ("queue", '"/run/backupmx/control.sock"'),
    "state_dir": ("queue", '"/var/lib/backupmx"'),
    "spool_dir": ("queue", '"/var/lib/backupmx/spool"'),
    "pg_synchronous_commit": ("queue", '"remote_apply"'),
    "hostname": ("", '"mx2.example.test"'),
    "also_known_as": ("smtp", '["mx2.example.net"]'),
    "down_after": ("alerts", "3"),
    "queue_threshold": ("alerts", "100"),
    "webhook": ("alerts", '"http://127.0.0.1:9/hook"'),
    "email": ("alerts", '"ops@example.net"'),
    "etrn_networks": ("domain", '["192.0.2.0/24"]'),
    "primary": ("domain", '"127.0.0.1:2526"'),
    "tls": ("domain", '"may"'),
    "tls_ca_file": ("domain", '""'),
    "tls_cert": ("smtp", None),  # files: made by the test
    "tls_key": ("smtp", None),
    "listen": ("smtp", '["127.0.0.1:2525"]'),
    "store": ("queue", '"sqlite:var/queue.db"'),
    "port": ("delivery", "25"),
    "connect_timeout": ("delivery", '"30s"'),
    "reply_timeout": ("delivery", '"5m"'),
}
# Backquoted words in the prose that are values or names, not keys.
NOT_KEYS = {"accept", "tempfail", "may", "encrypt", "verify", "dane", "list", "any", "info", "warn",
            "sqlite:", "true", "false"}


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def toml_blocks(text):
    return re.findall(r"```toml\n(.*?)```", text, re.S)


def section(text, title):
    start = text.index("\n## " + title)
    end = text.find("\n## ", start + 4)
    return text[start:end if end >= 0 else len(text)]


def prose_keys(readme):
    """(table, key) for each key the README's Configuration and Abuse-defences prose names."""
    text = section(readme, "Configuration") + section(readme, "Abuse defences")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # the blocks are checked whole
    keys = set()
    for word in re.findall(r"`([a-z_.:]+)`", text):
        if word in NOT_KEYS or word.startswith("[") or "_" not in word and "." not in word \
                and word not in SAMPLES:
            continue
        table, _, key = word.rpartition(".")
        keys.add((table or None, key))
    return keys


class DocumentedConfig(E2ETest):
    def check(self, toml):
        path = os.path.join(self.dir, "doc.toml")
        with open(path, "w") as f:
            f.write(toml)
        r = subprocess.run([BIN, "check-config", "--config", path], capture_output=True,
                           text=True, timeout=30, cwd=self.dir)
        return r.returncode, r.stdout + r.stderr

    def files(self):
        """The files documented examples name, made in the test's directory."""
        os.makedirs(os.path.join(self.dir, "var", "tls"), exist_ok=True)
        for name in ("cert.pem", "key.pem"):
            open(os.path.join(self.dir, "var", "tls", name), "w").close()
        rfile = os.path.join(self.dir, "recipients")
        with open(rfile, "w") as f:
            f.write("bob@example.test\n*@example.it\n")
        return rfile

    def test_every_toml_block_of_the_readme_and_fleet_doc_passes_check_config(self):
        rfile = self.files()
        blocks = [("README.md", b) for b in toml_blocks(read("README.md"))] + \
                 [("docs/fleet.md", b) for b in toml_blocks(read("docs/fleet.md"))]
        self.assertGreaterEqual(len(blocks), 3)
        for where, block in blocks:
            with self.subTest(where=where, block=block[:60]):
                block = block.replace("/etc/backupmx/example.it.recipients", rfile)
                if "[[domain]]" not in block:
                    block += '\n[[domain]]\nname = "example.test"\nprimary = "127.0.0.1:2526"\n'
                code, out = self.check(block)
                self.assertEqual(code, 0, out)

    def test_every_key_the_readme_prose_names_passes_check_config(self):
        rfile = self.files()
        keys = prose_keys(read("README.md"))
        self.assertIn((None, "milter_default_action"), keys)  # the parser reads the prose
        self.assertIn(("smtp", "max_errors"), keys)
        for table, key in sorted(keys, key=str):
            with self.subTest(key=key):
                self.assertIn(key, SAMPLES, f"`{key}` is documented but has no sample value here")
                where, value = SAMPLES[key]
                table = table or where
                if value is None:
                    value = f'"{rfile}"' if key == "recipient_file" else \
                        f'"var/tls/{"cert" if key == "tls_cert" else "key"}.pem"'
                lines = []
                if key == "tls_cert":
                    lines = ['[smtp]', f'tls_cert = {value}', 'tls_key = "var/tls/key.pem"']
                elif key == "tls_key":
                    lines = ['[smtp]', 'tls_cert = "var/tls/cert.pem"', f'tls_key = {value}']
                elif table == "domain":
                    lines = ['[[domain]]', 'name = "example.test"']
                    lines += [] if key == "primary" else ['primary = "127.0.0.1:2526"']
                    lines.append(f"{key} = {value}")
                elif table == "":
                    lines = [f"{key} = {value}"]
                else:
                    lines = [f"[{table}]", f"{key} = {value}"]
                    if key == "recipient_file":
                        lines.append('recipients = "list"')
                if table != "domain":
                    lines += ['[[domain]]', 'name = "example.test"', 'primary = "127.0.0.1:2526"']
                code, out = self.check("\n".join(lines) + "\n")
                self.assertEqual(code, 0, f"{table}.{key}: {out}")

    def test_a_bad_dnsbl_weight_is_a_config_error_naming_the_key(self):
        code, out = self.check('[policy]\ndnsbl = ["zone*-"]\n')
        self.assertEqual(code, 2, out)
        self.assertIn("policy.dnsbl", out)
        self.assertNotIn("stoi", out)


if __name__ == "__main__":
    main()
