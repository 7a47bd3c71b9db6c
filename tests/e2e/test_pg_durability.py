"""On the PostgreSQL store a 250 means the commit is flushed — and on the synchronous standby
when one is named — whatever the server's or the database's defaults say, and a server that runs
with fsync = off is refused. Each test starts its own PostgreSQL cluster (it changes settings the
shared one must keep).
"""
import socket
import time

from harness import E2ETest, Raw, free_port, main, wait_until
from pg import PgCluster


def start_data(port):
    """A session that has sent a whole message and waits for the reply to its final dot."""
    r = Raw(port, timeout=30)
    assert r.reply().startswith("220")
    for cmd, code in (("EHLO client.test", "250"), ("MAIL FROM:<alice@sender.test>", "250"),
                      ("RCPT TO:<bob@example.test>", "250"), ("DATA", "354")):
        reply = r.cmd(cmd)
        assert reply.startswith(code), (cmd, reply)
    r.send("Subject: durable\r\n\r\nbody\r\n.\r\n")
    return r


class PgDurability(E2ETest):
    def cluster(self, extra=""):
        c = PgCluster(self.dir, free_port())
        c.init()
        c.configure(extra)
        c.start()
        self.stoppers.append(c.stop)
        return c

    def test_a_250_waits_for_the_synchronous_standby_even_when_the_database_says_local(self):
        c = self.cluster()
        c.sql("CREATE DATABASE backupmx")
        c.sql("ALTER DATABASE backupmx SET synchronous_commit = local")  # would not wait
        b = self.backupmx({"example.test": "127.0.0.1:9"}, store=c.url(create=False),
                          extra_queue='retry_min = "1h"\nretry_max = "2h"').start()
        # A synchronous standby is named that never connects: a commit that honours
        # synchronous_commit = on waits for it.
        c.sql("ALTER SYSTEM SET synchronous_standby_names = 'absent'")
        c.sql("SELECT pg_reload_conf()")
        time.sleep(0.5)
        r = start_data(b.port)
        r.s.settimeout(3)
        with self.assertRaises(socket.timeout, msg="250 before the standby had the commit"):
            print("premature reply:", r.reply())
        c.sql("ALTER SYSTEM SET synchronous_standby_names = ''")
        c.sql("SELECT pg_reload_conf()")
        r.s.settimeout(30)
        self.assertRegex(r.reply(), r"^250 2\.0\.0 Ok: queued as")
        r.close()

    def test_pg_synchronous_commit_remote_apply_is_accepted_and_serves(self):
        c = self.cluster()
        b = self.backupmx({"example.test": "127.0.0.1:9"}, store=c.url(),
                          extra_queue='pg_synchronous_commit = "remote_apply"').start()
        r = start_data(b.port)
        self.assertRegex(r.reply(), r"^250 ")
        r.close()

    def test_a_server_with_fsync_off_is_refused_at_start(self):
        c = self.cluster("fsync = off\n")
        self.assertEqual(c.sql("SHOW fsync"), "off")
        b = self.backupmx({"example.test": "127.0.0.1:9"}, store=c.url()).start(wait=False)
        wait_until(lambda: b.proc.poll() is not None, timeout=30,
                   what="backupmx to refuse the store and exit")
        self.assertNotEqual(b.proc.returncode, 0)
        self.assertIn("fsync = off", b.log())
        self.assertNotIn("backupmx ready", b.log())


if __name__ == "__main__":
    main()
