"""The fsync trace checker (fsync_trace.py) on small hand-written strace logs: it passes a 250
that follows a store sync begun after the final dot was read, and fails every other order. No
server, no strace: the traces below are what `strace -f -tt -T -s N` prints."""
import os
import tempfile
import unittest

import fsync_trace

# The server opens its store (database and WAL), a spool directory and accepts a client (fd 7).
OPEN = """\
100 10:00:00.000100 openat(AT_FDCWD, "/q/queue.db", O_RDWR|O_CREAT|O_NOFOLLOW|O_CLOEXEC, 0644) = 5 <0.000020>
100 10:00:00.000200 openat(AT_FDCWD, "/q/queue.db-wal", O_RDWR|O_CREAT|O_NOFOLLOW|O_CLOEXEC, 0644) = 6 <0.000020>
100 10:00:00.000300 openat(AT_FDCWD, "/q", O_RDONLY|O_DIRECTORY|O_CLOEXEC) = 8 <0.000010>
101 10:00:01.000000 accept4(3, {sa_family=AF_INET, sin_port=htons(40000), sin_addr=inet_addr("127.0.0.1")}, [16], SOCK_CLOEXEC) = 7 <0.000010>
101 10:00:01.000100 recvmsg(7, {msg_name=NULL, msg_namelen=0, msg_iov=[{iov_base="DATA\\r\\n", iov_len=8192}], msg_iovlen=1, msg_controllen=0, msg_flags=0}, 0) = 6 <0.000010>
101 10:00:01.000200 sendmsg(7, {msg_name=NULL, msg_namelen=0, msg_iov=[{iov_base="354 End data with <CR><LF>.<CR><LF>\\r\\n", iov_len=37}], msg_iovlen=1, msg_controllen=0, msg_flags=0}, MSG_NOSIGNAL) = 37 <0.000010>
"""


def recv(pid, t, data, n=None, fd=7, cut=False):
    n = n if n is not None else len(data.encode().decode("unicode_escape"))
    return (f'{pid} {t} recvmsg({fd}, {{msg_name=NULL, msg_namelen=0, msg_iov=[{{iov_base='
            f'"{data}"{"..." if cut else ""}, iov_len=8192}}], msg_iovlen=1, msg_controllen=0, '
            f'msg_flags=0}}, 0) = {n} <0.000010>\n')


def reply250(pid, t, qid="ABC123", fd=7):
    return (f'{pid} {t} sendmsg({fd}, {{msg_name=NULL, msg_namelen=0, msg_iov=[{{iov_base='
            f'"250 2.0.0 Ok: queued as {qid}\\r\\n", iov_len=32}}], msg_iovlen=1, '
            f'msg_controllen=0, msg_flags=0}}, MSG_NOSIGNAL) = 32 <0.000010>\n')


BODY = recv(101, "10:00:01.000300", "Subject: x\\r\\n\\r\\nhello\\r\\n.\\r\\n")
SYNC = "102 10:00:01.000500 fdatasync(6) = 0 <0.001000>\n"
GOOD = OPEN + BODY + SYNC + reply250(101, "10:00:01.002000")


class Checker(unittest.TestCase):
    def test_250_after_wal_sync_begun_after_the_dot_passes(self):
        rep = fsync_trace.analyse(GOOD, store_path="/q/queue.db")
        self.assertEqual(rep.violations, [])
        self.assertEqual(rep.checked, 1)
        self.assertEqual(rep.replies[0].ids, "ABC123")
        self.assertIn("fdatasync(6)", rep.replies[0].proof)
        # The store's files are found from their -wal without being named, too.
        self.assertEqual(fsync_trace.check(GOOD), [])

    def test_250_written_while_the_sync_is_still_running_fails(self):
        trace = (OPEN + BODY
                 + "102 10:00:01.000500 fdatasync(6 <unfinished ...>\n"
                 + reply250(101, "10:00:01.001000")
                 + "102 10:00:01.002000 <... fdatasync resumed>) = 0 <0.001500>\n")
        v = fsync_trace.check(trace, store_path="/q/queue.db")
        self.assertEqual(len(v), 1, v)
        self.assertIn("returned only after it", v[0])

    def test_sync_completed_before_the_dot_was_read_fails(self):
        trace = OPEN + SYNC.replace("01.000500", "01.000250") + BODY.replace(
            "01.000300", "01.001500") + reply250(101, "10:00:01.002000")
        v = fsync_trace.check(trace, store_path="/q/queue.db")
        self.assertEqual(len(v), 1, v)
        self.assertIn("began before its final dot", v[0])

    def test_sync_begun_before_the_dot_read_returned_fails(self):
        # The read holding the dot returns at .000900 (its resumed line); a sync begun at .000500
        # cannot hold the message, although it ends after the dot and before the 250.
        trace = (OPEN
                 + "101 10:00:01.000300 recvmsg(7,  <unfinished ...>\n"
                 + "102 10:00:01.000500 fdatasync(6 <unfinished ...>\n"
                 + "101 10:00:01.000900 <... recvmsg resumed>{msg_name=NULL, msg_namelen=0, "
                   "msg_iov=[{iov_base=\"hello\\r\\n.\\r\\n\", iov_len=8192}], msg_iovlen=1, "
                   "msg_controllen=0, msg_flags=0}, 0) = 10 <0.000600>\n"
                 + "102 10:00:01.001000 <... fdatasync resumed>) = 0 <0.000500>\n"
                 + reply250(101, "10:00:01.002000"))
        self.assertEqual(len(fsync_trace.check(trace, store_path="/q/queue.db")), 1)

    def test_unfinished_and_resumed_halves_across_threads_pass(self):
        # The dot is read by thread 101, the WAL synced by 102, both interrupted by other lines.
        trace = (OPEN
                 + "101 10:00:01.000300 recvmsg(7,  <unfinished ...>\n"
                 + "103 10:00:01.000350 write(1, \"log line\\n\", 9) = 9 <0.000010>\n"
                 + "101 10:00:01.000400 <... recvmsg resumed>{msg_name=NULL, msg_namelen=0, "
                   "msg_iov=[{iov_base=\"hello\\r\\n.\\r\\n\", iov_len=8192}], msg_iovlen=1, "
                   "msg_controllen=0, msg_flags=0}, 0) = 10 <0.000100>\n"
                 + "102 10:00:01.000500 fdatasync(6 <unfinished ...>\n"
                 + "101 10:00:01.000600 write(1, \"x\", 1) = 1 <0.000010>\n"
                 + "102 10:00:01.001500 <... fdatasync resumed>) = 0 <0.001000>\n"
                 + reply250(101, "10:00:01.002000"))
        rep = fsync_trace.analyse(trace, store_path="/q/queue.db")
        self.assertEqual(rep.violations, [])
        self.assertEqual(rep.checked, 1)

    def test_dot_split_across_two_reads_counts_from_the_second(self):
        head = OPEN + recv(101, "10:00:01.000300", "hello\\r\\n.") \
            + recv(101, "10:00:01.000700", "\\r\\n")
        early = "102 10:00:01.000500 fdatasync(6) = 0 <0.000100>\n"
        late = "102 10:00:01.000800 fdatasync(6) = 0 <0.000100>\n"
        end = reply250(101, "10:00:01.002000")
        self.assertEqual(len(fsync_trace.check(
            OPEN + recv(101, "10:00:01.000300", "hello\\r\\n.") + early
            + recv(101, "10:00:01.000700", "\\r\\n") + end, store_path="/q/queue.db")), 1)
        self.assertEqual(fsync_trace.check(head + late + end, store_path="/q/queue.db"), [])

    def test_read_cut_by_strace_counts_as_maybe_holding_the_dot(self):
        # -s 16: the dot is in the 9000 bytes, but not in what strace printed.
        cut = recv(101, "10:00:01.000300", "Subject: x\\r\\n\\r\\nhel", n=9000, cut=True)
        before = "102 10:00:01.000200 fdatasync(6) = 0 <0.000010>\n"
        end = reply250(101, "10:00:01.002000")
        rep = fsync_trace.analyse(OPEN + cut + SYNC + end, store_path="/q/queue.db")
        self.assertEqual((rep.violations, rep.cut_reads), ([], 1))
        self.assertEqual(len(fsync_trace.check(OPEN + before + cut + end,
                                               store_path="/q/queue.db")), 1)
        # After a cut read, a short read that could end a dot begun in the hidden bytes is the
        # dot's read: a sync between the two does not count.
        tail = recv(101, "10:00:01.000700", "\\n")
        self.assertEqual(len(fsync_trace.check(OPEN + cut + SYNC.replace("000500", "000400")
                                               + tail + end, store_path="/q/queue.db")), 1)

    def test_with_wal_writes_traced_the_sync_must_follow_the_row_write(self):
        row = ('102 10:00:01.000400 pwrite64(6, "\\r\\0\\0\\0\\1ABC123example.test", 21, 4152)'
               ' = 21 <0.000010>\n')
        end = reply250(101, "10:00:01.002000")
        self.assertEqual(fsync_trace.check(OPEN + BODY + row + SYNC + end,
                                           store_path="/q/queue.db"), [])
        # The sync of another commit, before the message's row reached the WAL.
        late_row = row.replace("01.000400", "01.000600")
        v = fsync_trace.check(OPEN + BODY + SYNC + late_row + end, store_path="/q/queue.db")
        self.assertEqual(len(v), 1, v)
        self.assertIn("write of its queue id", v[0])

    def test_sync_of_a_dup_of_the_wal_counts(self):
        trace = (OPEN + "100 10:00:01.000050 fcntl(6, F_DUPFD_CLOEXEC, 10) = 11 <0.000005>\n"
                 + BODY + SYNC.replace("fdatasync(6)", "fsync(11)")
                 + reply250(101, "10:00:01.002000"))
        self.assertEqual(fsync_trace.check(trace, store_path="/q/queue.db"), [])

    def test_sync_of_another_file_or_a_reused_fd_does_not_count(self):
        end = reply250(101, "10:00:01.002000")
        other = OPEN + BODY + SYNC.replace("fdatasync(6)", "fsync(8)") + end  # the directory
        self.assertEqual(len(fsync_trace.check(other, store_path="/q/queue.db")), 1)
        reused = (OPEN + "100 10:00:01.000010 close(6) = 0 <0.000005>\n"
                  + "100 10:00:01.000020 openat(AT_FDCWD, \"/q\", O_RDWR|O_TMPFILE, 0600) = 6"
                    " <0.000010>\n" + BODY + SYNC + end)
        self.assertEqual(len(fsync_trace.check(reused, store_path="/q/queue.db")), 1)

    def test_failed_or_unreturned_sync_does_not_count(self):
        end = reply250(101, "10:00:01.002000")
        failed = OPEN + BODY + SYNC.replace("= 0 <", "= -1 EIO (Input/output error) <") + end
        self.assertEqual(len(fsync_trace.check(failed, store_path="/q/queue.db")), 1)
        killed = (OPEN + BODY + "102 10:00:01.000500 fdatasync(6 <unfinished ...>\n" + end
                  + "102 10:00:01.003000 <... fdatasync resumed>) = ?\n"
                  + "102 10:00:01.003000 +++ killed by SIGKILL +++\n")
        self.assertEqual(len(fsync_trace.check(killed, store_path="/q/queue.db")), 1)

    def test_250_with_no_dot_read_before_it_fails(self):
        trace = OPEN + SYNC + reply250(101, "10:00:01.002000")
        v = fsync_trace.check(trace, store_path="/q/queue.db")
        self.assertEqual(len(v), 1)
        self.assertIn("no final dot", v[0])

    def test_each_reply_needs_its_own_sync_after_its_own_dot(self):
        # Two sessions: the first message's sync comes before the second message's dot.
        second = "103 10:00:01.000000 accept4(3, NULL, NULL, SOCK_CLOEXEC) = 9 <0.000010>\n"
        trace = (OPEN + second + BODY + SYNC + reply250(101, "10:00:01.002000")
                 + recv(103, "10:00:01.003000", "bye\\r\\n.\\r\\n", fd=9)
                 + reply250(103, "10:00:01.004000", "DEF456", fd=9))
        rep = fsync_trace.analyse(trace, store_path="/q/queue.db")
        self.assertEqual(rep.checked, 2)
        self.assertEqual(len(rep.violations), 1)
        self.assertIn("DEF456", rep.violations[0])
        fixed = trace.replace(reply250(103, "10:00:01.004000", "DEF456", fd=9),
                              "102 10:00:01.003500 fsync(5) = 0 <0.000100>\n"
                              + reply250(103, "10:00:01.004000", "DEF456", fd=9))
        self.assertEqual(fsync_trace.check(fixed, store_path="/q/queue.db"), [])

    def test_trace_without_its_syncs_fails(self):
        split = (OPEN + BODY + "102 10:00:01.000500 fdatasync(6 <unfinished ...>\n"
                 + "101 10:00:01.000600 write(1, \"x\", 1) = 1 <0.000010>\n"
                 + "102 10:00:01.001500 <... fdatasync resumed>) = 0 <0.001000>\n"
                 + reply250(101, "10:00:01.002000"))
        self.assertEqual(fsync_trace.check(split, store_path="/q/queue.db"), [])
        stripped = fsync_trace.without_syncs(split)
        self.assertNotIn("fdatasync", stripped)
        self.assertIn('write(1, "x"', stripped)
        self.assertEqual(len(fsync_trace.check(stripped, store_path="/q/queue.db")), 1)

    def test_postgresql_commit_of_the_row_sent_after_the_dot_passes(self):
        pg = ("104 10:00:00.500000 connect(12, {sa_family=AF_INET, sin_port=htons(5433), "
              "sin_addr=inet_addr(\"127.0.0.1\")}, 16) = -1 EINPROGRESS (Operation now in "
              "progress) <0.000020>\n")
        commit_req = ("104 10:00:01.000500 sendto(12, \"B\\0\\0\\0\\20\\0s3\\0\\0\\0\\0\\0\\0\\0"
                      "E\\0\\0\\0\\t\\0\\0\\0\\0\\0S\\0\\0\\0\\4\", 31, MSG_NOSIGNAL, NULL, 0) = 31"
                      " <0.000010>\n")
        commit_rep = ("104 10:00:01.001500 recvfrom(12, \"2\\0\\0\\0\\4C\\0\\0\\0\\vCOMMIT\\0Z\\0"
                      "\\0\\0\\5I\", 16384, 0, NULL, NULL) = 23 <0.000010>\n")
        insert = ("104 10:00:01.000400 sendto(12, \"B\\0\\0\\0\\37\\0s7\\0\\0\\0\\0\\1\\0\\0"
                  "\\0\\6ABC123\\0\\0\", 31, MSG_NOSIGNAL, NULL, 0) = 31 <0.000010>\n")
        end = reply250(101, "10:00:01.002000")
        rep = fsync_trace.analyse(pg + OPEN + BODY + insert + commit_req + commit_rep + end,
                                  pg_port=5433)
        self.assertEqual((rep.violations, rep.checked, rep.syncs), ([], 1, 1))
        # The row sent before the dot was read: not this message.
        early = insert.replace("01.000400", "01.000250")
        self.assertEqual(len(fsync_trace.check(
            pg + OPEN + early + BODY + commit_req + commit_rep + end, pg_port=5433)), 1)
        # A COMMIT after the dot of a transaction without the message's row does not count.
        self.assertEqual(len(fsync_trace.check(
            pg + OPEN + BODY + commit_req + commit_rep + end, pg_port=5433)), 1)
        # Nor the row's COMMIT reply read after the 250.
        late = commit_rep.replace("01.001500", "01.002500")
        self.assertEqual(len(fsync_trace.check(
            pg + OPEN + BODY + insert + commit_req + end + late, pg_port=5433)), 1)
        # Nor a COMMIT reply on a socket that is not the database's.
        self.assertEqual(len(fsync_trace.check(
            pg.replace("5433", "5999") + OPEN + BODY + insert + commit_req + commit_rep + end,
            pg_port=5433)), 1)

    def test_ff_files_are_merged_by_time(self):
        with tempfile.TemporaryDirectory() as d:
            by_pid = {}
            for line in GOOD.splitlines():
                pid, rest = line.split(" ", 1)
                by_pid.setdefault(pid, []).append(rest)
            for pid, lines in by_pid.items():
                with open(os.path.join(d, f"trace.{pid}"), "w") as f:
                    f.write("\n".join(lines) + "\n")
            merged = fsync_trace.load(os.path.join(d, "trace"))
        rep = fsync_trace.analyse(merged, store_path="/q/queue.db")
        self.assertEqual((rep.violations, rep.checked), ([], 1))
        self.assertEqual(len(fsync_trace.check(fsync_trace.without_syncs(merged))), 1)

    def test_strace_string_escapes_are_decoded(self):
        self.assertEqual(fsync_trace.strings(r'"a\r\n\0\33\x41\"\\z"..., 5'),
                         [(b'a\r\n\x00\x1bA"\\z', True)])


if __name__ == "__main__":
    unittest.main(verbosity=2)
