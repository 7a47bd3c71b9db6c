"""Attack suite: the classic open-relay vectors, replayed against backupmx (the SMTP smuggling
variants are in test_smtp_protocol.py). Nothing may be accepted for a host that is not ours."""
import socket
import time

from harness import E2ETest, Raw, main

RELAY_VECTORS = [
    "victim@outside.test",                       # plain relay
    "victim%outside.test@example.test",          # percent hack
    "outside.test!victim@example.test",          # bang path
    "outside.test!victim",                       # bare bang path
    "\"victim@outside.test\"@example.test",      # quoted @
    "<@example.test:victim@outside.test>",       # source route through us
    "<@example.test,@relay.test:victim@outside.test>",
    "victim@[127.0.0.1]",                        # IP literal: our own address
    "victim@[192.0.2.1]",
    "victim@outside.test.",                      # trailing dot
    "victim@example.test.outside.test",          # our name as a prefix
    "victim@sub.example.test",                   # subdomain of ours
    "victim@outside.test@example.test",          # two @
    "victim",                                    # no domain
    "postmaster@outside.test",
]


class OpenRelay(E2ETest):
    def test_classic_relay_vectors_are_refused(self):
        p = self.scripted().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"}).start()
        for sender in ("spammer@outside.test", "", "user@example.test"):
            r = Raw(b.port)
            r.reply()
            r.cmd("EHLO attacker.test")
            self.assertTrue(r.cmd(f"MAIL FROM:<{sender}>").startswith("250"), sender)
            for v in RELAY_VECTORS:
                arg = v if v.startswith("<") else f"<{v}>"
                reply = r.cmd(f"RCPT TO:{arg}")
                self.assertTrue(reply[:1] in ("5",), (sender, v, reply))
            self.assertTrue(r.cmd("DATA").startswith("554"))  # nothing was accepted
            r.cmd("QUIT")
            r.close()
        time.sleep(0.3)
        self.assertEqual(b.queue(), [])
        self.assertEqual(p.transactions, [])

    def test_relay_through_our_own_address_literal(self):
        p = self.scripted().start()
        b = self.backupmx({"example.test": f"127.0.0.1:{p.port}"}).start()
        s = b.smtp()
        code, msg = s.docmd("MAIL FROM:<a@outside.test>")
        self.assertEqual(code, 250)
        code, msg = s.docmd("RCPT TO:<victim@[127.0.0.1]>")
        self.assertEqual(code, 550, msg)
        code, msg = s.docmd(f"RCPT TO:<victim@[IPv6:::1]>")
        self.assertEqual(code // 100, 5, msg)


if __name__ == "__main__":
    main()
