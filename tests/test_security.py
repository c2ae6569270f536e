"""
Tests for L{robustmq.security}: password files and ACL rules.
"""

import base64
import hashlib
import os
import stat

from attrs import frozen
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from robustmq.interfaces import IAuthenticator, IAuthorizer
from robustmq.security import (
    Authenticator, Authorizer, PasswordFileError, filter_covers, hash_password,
    parse_password_file, topic_matches, verify_password,
)


@frozen
class Rule:
    permission: str
    action: str
    topic: str
    user: str = None
    client_id: str = None
    ip: str = None


class PasswordTests(TestCase):
    def test_pbkdf2(self):
        encoded = hash_password("s3cret", iterations=100)
        self.assertTrue(encoded.startswith("$7$100$"))
        self.assertTrue(verify_password("s3cret", encoded))
        self.assertFalse(verify_password("wrong", encoded))

    def test_known_vector(self):
        """
        The C{$7$} format is PBKDF2-HMAC-SHA512 over the base64 salt, as
        C{mosquitto_passwd} writes it; C{$6$} is SHA-512 of password + salt.
        """
        salt = b"0123456789ab"
        digest = hashlib.pbkdf2_hmac("sha512", b"pw", salt, 101)
        line = "$7$101${}${}".format(base64.b64encode(salt).decode(), base64.b64encode(digest).decode())
        self.assertTrue(verify_password("pw", line))
        sha = hashlib.sha512(b"pw" + salt).digest()
        six = "$6${}${}".format(base64.b64encode(salt).decode(), base64.b64encode(sha).decode())
        self.assertTrue(verify_password("pw", six))
        self.assertFalse(verify_password("pw", "$6$!!$!!"))
        self.assertFalse(verify_password("pw", "plain"))

    def test_file(self):
        text = "# users\nalice:{}\n\nbob:{}\n".format(
            hash_password("a", iterations=10), hash_password("b", iterations=10)
        )
        users = parse_password_file(text)
        self.assertEqual(sorted(users), ["alice", "bob"])
        auth = Authenticator(users, allow_anonymous=False)
        verifyObject(IAuthenticator, auth)
        self.assertTrue(self.successResultOf(auth.authenticate("alice", "a")))
        self.assertTrue(self.successResultOf(auth.authenticate("alice", b"a")))
        self.assertTrue(self.successResultOf(auth.authenticate("alice", "a")))
        self.assertFalse(self.successResultOf(auth.authenticate("alice", "b")))
        self.assertFalse(self.successResultOf(auth.authenticate("carol", "a")))
        self.assertFalse(self.successResultOf(auth.authenticate("alice", None)))
        self.assertTrue(auth.user_exists("bob"))
        self.assertFalse(auth.allow_anonymous)

    def test_bad_file(self):
        e = self.assertRaises(PasswordFileError, parse_password_file, "ok\nx:$9$a\n", "pw.txt")
        self.assertIn("pw.txt:1", str(e))
        self.assertIn("pw.txt:2", str(e))


class TopicTests(TestCase):
    def test_matches(self):
        cases = [
            ("a/b", "a/b", True), ("a/+", "a/b", True), ("a/+", "a/b/c", False),
            ("a/#", "a", True), ("a/#", "a/b/c", True), ("#", "a/b", True),
            ("+/+", "/x", True), ("#", "$SYS/x", False), ("+/x", "$SYS/x", False),
            ("$SYS/#", "$SYS/x", True), ("a/b", "a/c", False), ("+", "a/b", False),
        ]
        for f, t, want in cases:
            self.assertEqual(topic_matches(f, t), want, (f, t))

    def test_covers(self):
        cases = [
            ("a/#", "a/+/b", True), ("a/#", "#", False), ("a/+", "a/b", True),
            ("a/+", "a/+", True), ("a/b", "a/+", False), ("a/+", "a/#", False),
            ("#", "$SYS/#", False), ("#", "x/#", True),
        ]
        for rule, req, want in cases:
            self.assertEqual(filter_covers(rule, req), want, (rule, req))


class AuthorizerTests(TestCase):
    def test_first_match_wins(self):
        a = Authorizer([
            Rule("deny", "publish", "secret/#"),
            Rule("allow", "all", "#"),
        ], "deny")
        verifyObject(IAuthorizer, a)
        self.assertFalse(a.check("publish", "secret/x"))
        self.assertTrue(a.check("subscribe", "secret/x"))
        self.assertTrue(a.check("publish", "open"))

    def test_default(self):
        self.assertTrue(Authorizer([], "allow").check("publish", "x"))
        self.assertFalse(Authorizer([], "deny").check("publish", "x"))
        self.assertFalse(Authorizer([Rule("allow", "publish", "a")], "deny").check("publish", "b"))

    def test_placeholders_and_conditions(self):
        a = Authorizer([
            Rule("allow", "all", "users/%u/#"),
            Rule("allow", "publish", "clients/%c"),
            Rule("allow", "subscribe", "admin/#", user="root"),
            Rule("allow", "publish", "lan/#", ip="10.0.0.0/8"),
            Rule("allow", "publish", "dev/#", client_id="dev1"),
        ], "deny")
        self.assertTrue(a.check("publish", "users/ann/x", user="ann"))
        self.assertFalse(a.check("publish", "users/ann/x", user="bob"))
        self.assertFalse(a.check("publish", "users//x"))
        self.assertTrue(a.check("publish", "clients/c1", client_id="c1"))
        self.assertTrue(a.check("subscribe", "admin/+", user="root"))
        self.assertFalse(a.check("subscribe", "admin/+", user="ann"))
        self.assertTrue(a.check("publish", "lan/a", ip="10.1.2.3"))
        self.assertFalse(a.check("publish", "lan/a", ip="192.168.1.1"))
        self.assertFalse(a.check("publish", "lan/a", ip=None))
        self.assertTrue(a.check("publish", "dev/x", client_id="dev1"))
        self.assertFalse(a.check("publish", "dev/x", client_id="dev2"))


class ScramTests(TestCase):
    def test_scram_entry(self):
        """
        C{$scram-sha-256$} lines verify passwords and give SCRAM
        credentials equal to RFC 5802's derivation.
        """
        from robustmq.kafka.sasl import scram_credentials
        from robustmq.security import scram_entry

        salt = b"0123456789ab"
        line = scram_entry("pw", "SCRAM-SHA-256", iterations=4096, salt=salt)
        self.assertTrue(line.startswith("$scram-sha-256$4096$"))
        self.assertTrue(verify_password("pw", line))
        self.assertFalse(verify_password("other", line))
        users = parse_password_file("kafka:{}\nkafka:{}\n".format(
            hash_password("pw", iterations=50), line))
        auth = Authenticator(users)
        self.assertTrue(self.successResultOf(auth.authenticate("kafka", "pw")))
        self.assertEqual(
            auth.scram_credentials("kafka", "SCRAM-SHA-256"),
            scram_credentials("pw", "SCRAM-SHA-256", salt=salt, iterations=4096),
        )
        self.assertIsNone(auth.scram_credentials("nobody", "SCRAM-SHA-256"))

    def test_no_scram_from_mosquitto_hash(self):
        """
        A C{$7$} hash is never served as SCRAM credentials: its digest is
        SCRAM-SHA-512's salted password, so whoever reads the file could log
        in. PLAIN still works from it, with a warning to re-run passwd.
        """
        salt = b"saltsaltsalt"
        events = []
        self.patch(Authenticator, "log", Logger(observer=events.append))
        auth = Authenticator({"m": hash_password("pw", iterations=4096, salt=salt)})
        self.assertIsNone(auth.scram_credentials("m", "SCRAM-SHA-512"))
        self.assertIsNone(auth.scram_credentials("m", "SCRAM-SHA-256"))
        self.assertTrue(self.successResultOf(auth.authenticate("m", "pw")))
        [warning] = [formatEvent(e) for e in events]
        self.assertIn("m without SCRAM", warning)
        self.assertIn("re-run 'python -m robustmq.security passwd", warning)

    def test_scram_line_sharing_the_pbkdf2_salt(self):
        """
        A SCRAM-SHA-512 line with the salt and iteration count of the
        user's C{$7$} line is not served (the C{$7$} digest would log in).
        """
        from robustmq.security import scram_entry

        salt = b"saltsaltsalt"
        users = {"m": [hash_password("pw", iterations=4096, salt=salt),
                       scram_entry("pw", "SCRAM-SHA-512", iterations=4096, salt=salt),
                       scram_entry("pw", "SCRAM-SHA-256", iterations=4096, salt=salt)]}
        auth = Authenticator(users)
        self.assertIsNone(auth.scram_credentials("m", "SCRAM-SHA-512"))
        self.assertIsNotNone(auth.scram_credentials("m", "SCRAM-SHA-256"))

    def test_passwd_command(self):
        from robustmq.security import main

        path = self.mktemp()
        self.assertEqual(main(["passwd", path, "alice", "a1"]), 0)
        self.assertEqual(main(["passwd", path, "bob", "b1"]), 0)
        self.assertEqual(main(["passwd", path, "alice", "a2"]), 0)
        with open(path) as f:
            users = parse_password_file(f.read())
        auth = Authenticator(users)
        self.assertTrue(self.successResultOf(auth.authenticate("alice", "a2")))
        self.assertFalse(self.successResultOf(auth.authenticate("alice", "a1")))
        self.assertTrue(self.successResultOf(auth.authenticate("bob", "b1")))
        self.assertIsNotNone(auth.scram_credentials("alice", "SCRAM-SHA-256"))
        self.assertIsNotNone(auth.scram_credentials("alice", "SCRAM-SHA-512"))

    def test_passwd_lines_have_their_own_salts(self):
        """
        passwd writes a C{$7$} line, a C{$scram-sha-256$} and a
        C{$scram-sha-512$} line, each with its own salt, and SCRAM lines
        hold StoredKey and ServerKey, not the salted password.
        """
        from robustmq.kafka.sasl import scram_credentials
        from robustmq.security import main

        path = self.mktemp()
        self.assertEqual(main(["passwd", path, "alice", "a1"]), 0)
        with open(path) as f:
            lines = [line.partition(":")[2].split("$") for line in f.read().split()]
        self.assertEqual([p[1] for p in lines], ["7", "scram-sha-256", "scram-sha-512"])
        salts = [p[3] for p in lines]
        self.assertEqual(len(set(salts)), 3)
        salt, iterations = base64.b64decode(lines[2][3]), int(lines[2][2])
        _, _, stored, server = scram_credentials("a1", "SCRAM-SHA-512", salt, iterations)
        self.assertEqual(lines[2][4:], [base64.b64encode(stored).decode(),
                                        base64.b64encode(server).decode()])
        salted = hashlib.pbkdf2_hmac("sha512", b"a1", salt, iterations)
        self.assertNotIn(base64.b64encode(salted).decode(), "$".join(sum(lines, [])))

    def test_passwd_mode_0600(self):
        """
        passwd writes the file readable by its owner only, whatever the
        umask and the mode the file had.
        """
        from robustmq.security import main

        path = self.mktemp()
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        self.assertEqual(main(["passwd", path, "alice", "a1"]), 0)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        os.chmod(path, 0o644)
        self.assertEqual(main(["passwd", path, "bob", "b1"]), 0)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(os.listdir(os.path.dirname(os.path.abspath(path))),
                         [os.path.basename(path)])
