"""The server's own files — the spool for large bodies, the control socket — go under one state
directory, never the working directory (which is `/` under a service manager), and a spool that
cannot be written stops the server at start with an error naming the key. Runs on both engines.
"""
import os
import stat
import subprocess

from harness import E2ETest, main, wait_until

LARGE = b"Subject: large\r\n\r\n" + (b"z" * 998 + b"\r\n") * 200  # 200 KB: beyond 64 KiB


class StateDir(E2ETest):
    def test_a_large_message_is_accepted_with_an_unwritable_working_directory(self):
        """/proc takes no new files, even from root: the spool must not be there."""
        sink = self.sink().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{sink.port}"}, cwd="/proc").start()
        s = b.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test"], LARGE)
        s.quit()
        wait_until(lambda: len(sink.messages()) == 1, timeout=30, what="the large message")
        self.assertIn(b"z" * 998, sink.messages()[0]["content"])
        self.assertNotIn("451", b.log())

    def test_spool_dir_and_control_socket_default_under_state_dir(self):
        state = os.path.join(self.dir, "state-here")
        b = self.backupmx({"example.test": "127.0.0.1:9"},
                          extra_queue=f'state_dir = "{state}"').start()
        self.assertTrue(os.path.isdir(os.path.join(state, "spool")), "spool made at start")
        sock = os.path.join(state, "control.sock")
        mode = os.stat(sock).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o600, "the control socket is the owner's alone")
        self.assertIn("ok", b.cli("queue", "flush").stdout)

    def test_an_unwritable_spool_dir_stops_the_server_at_start_naming_the_key(self):
        b = self.backupmx({"example.test": "127.0.0.1:9"},
                          extra_queue='spool_dir = "/proc/backupmx-spool"').start(wait=False)
        wait_until(lambda: b.proc.poll() is not None, timeout=30, what="backupmx to exit")
        self.assertNotEqual(b.proc.returncode, 0)
        self.assertIn('queue.spool_dir = "/proc/backupmx-spool"', b.log())
        self.assertNotIn("backupmx ready", b.log())


class PrivateFiles(E2ETest):
    """Queued mail is nobody else's (issue 14 point 13): started with umask 000, the store, its
    -wal and -shm, the state and spool directories and the control socket are 0600 / 0700, and
    the user nobody cannot read a byte of them. An existing 0644 store is narrowed at open."""

    def read_as_nobody(self, path):
        """True when the user nobody can read `path` (a file) or list it (a directory)."""
        cmd = ["ls", path] if os.path.isdir(path) else ["head", "-c1", path]
        return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                               "--"] + cmd, capture_output=True).returncode == 0

    def test_store_spool_and_state_files_are_private_whatever_the_umask(self):
        self.assertEqual(os.geteuid(), 0, "setpriv to nobody needs root")
        os.chmod(self.dir, 0o755)  # the test's own directory lets nobody in: only modes guard
        state = os.path.join(self.dir, "state", "deeper")
        sink = self.sink().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{sink.port}"},
                          extra_queue=f'state_dir = "{state}"')
        old = os.umask(0)
        try:
            b.start()
        finally:
            os.umask(old)
        s = b.smtp()
        s.sendmail("alice@sender.test", ["bob@example.test"], LARGE)  # through the spool
        s.quit()
        wait_until(lambda: len(sink.messages()) == 1, timeout=30, what="the large message")
        files = [b.store[len("sqlite:"):]] if b.store.startswith("sqlite:") else []
        files += [f + suffix for f in files for suffix in ("-wal", "-shm")]
        dirs = [os.path.join(self.dir, "state"), state, os.path.join(state, "spool")]
        for f in files:
            self.assertTrue(os.path.exists(f), f)
            self.assertEqual(stat.S_IMODE(os.stat(f).st_mode) & 0o077, 0, f)
            self.assertFalse(self.read_as_nobody(f), f"nobody read {f}")
        for d in dirs:
            self.assertEqual(stat.S_IMODE(os.stat(d).st_mode), 0o700, d)
            self.assertFalse(self.read_as_nobody(d), f"nobody listed {d}")
        sock = os.path.join(state, "control.sock")
        self.assertEqual(stat.S_IMODE(os.stat(sock).st_mode) & 0o077, 0, sock)
        print(f"\n  checked {len(files)} store files, {len(dirs)} directories, the control "
              "socket: none readable by nobody")


class PrivateSqliteFile(E2ETest):
    def test_an_existing_world_readable_store_is_narrowed_at_open(self):
        b = self.backupmx({"example.test": "127.0.0.1:9"},
                          store=f"sqlite:{self.dir}/queue.db")  # (a file: on either engine's run)
        path = b.store[len("sqlite:"):]
        with open(path, "wb"):
            pass
        os.chmod(path, 0o644)
        b.start()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)


if __name__ == "__main__":
    main()
