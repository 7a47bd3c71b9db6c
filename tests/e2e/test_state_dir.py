"""The server's own files — the spool for large bodies, the control socket — go under one state
directory, never the working directory (which is `/` under a service manager), and a spool that
cannot be written stops the server at start with an error naming the key. Runs on both engines.
"""
import os
import stat

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


if __name__ == "__main__":
    main()
