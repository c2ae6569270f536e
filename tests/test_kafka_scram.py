"""
Tests for L{robustmq.kafka.scramapi}: DescribeUserScramCredentials and
AlterUserScramCredentials over the password file, with Kafka's error codes,
through the protocol and with confluent-kafka's AdminClient against the real
broker.
"""

import base64
import hashlib
import os
import stat
import threading

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from robustmq.config import parse_config
from robustmq.kafka import codec, errors
from robustmq.kafka.protocol import SERVED_VERSIONS
from robustmq.kafka.scramapi import edit_password_file
from robustmq.kafka.service import KafkaService
from robustmq.kafka.testing import FakeClient, kafka_params
from robustmq.security import (
    Authenticator, hash_password, main as passwd, parse_password_file, scram_entry,
)
from robustmq.server import BrokerServer

try:
    import confluent_kafka
    from confluent_kafka import KafkaError, KafkaException
except ImportError:  # pragma: no cover
    confluent_kafka = None

DESCRIBE, ALTER = 50, 51
SHA256, SHA512 = 1, 2


def body(api_key, **fields):
    b = codec.default_body("request", api_key, 0)
    b.update(fields)
    return b


def salted(password, salt, iterations, mechanism=SHA512):
    name = "sha512" if mechanism == SHA512 else "sha256"
    return hashlib.pbkdf2_hmac(name, password, salt, iterations)


def upsertion(user, password=b"pw", mechanism=SHA512, iterations=4096, salt=b"0123456789ab"):
    return {"name": user, "mechanism": mechanism, "iterations": iterations, "salt": salt,
            "salted_password": salted(password, salt, max(iterations, 1), mechanism)}


def deletion(user, mechanism=SHA512):
    return {"name": user, "mechanism": mechanism}


def results(response):
    return {r["user"]: (r["error_code"], r["error_message"]) for r in response["results"]}


FILE = """# robustmq users
alice:{alice7}
alice:{alice256}

bob:{bob7}
# the end
""".format(alice7=hash_password("alice-pw", 1000), alice256=scram_entry("alice-pw"),
           bob7=hash_password("bob-pw", 1000))


class EditTests(SynchronousTestCase):
    """
    L{edit_password_file} changes only the SCRAM lines named.
    """

    def test_upsert_delete_keep_the_rest(self):
        new = scram_entry("x", "SCRAM-SHA-512")
        text, refused, changed = edit_password_file(FILE, {
            "alice": [("SCRAM-SHA-256", None), ("SCRAM-SHA-512", new)],
            "carol": [("SCRAM-SHA-512", new)],
        })
        self.assertEqual(refused, {})
        lines = text.splitlines()
        self.assertEqual(lines[0], "# robustmq users")
        self.assertEqual(lines[-1], "carol:" + new)
        self.assertIn("# the end", lines)
        self.assertIn("", lines)
        self.assertNotIn(FILE.splitlines()[2], lines)
        users = parse_password_file(text)
        self.assertEqual(users["alice"], [FILE.splitlines()[1].partition(":")[2], new])
        self.assertEqual(users["bob"], parse_password_file(FILE)["bob"])
        self.assertEqual(changed, {"alice": users["alice"], "carol": [new]})
        # Replaced in place.
        again = scram_entry("y", "SCRAM-SHA-512")
        text2, _, _ = edit_password_file(text, {"alice": [("SCRAM-SHA-512", again)]})
        self.assertEqual(text2, text.replace(new, again, 1))

    def test_missing_credential_refuses_all_of_the_user(self):
        new = scram_entry("x", "SCRAM-SHA-512")
        text, refused, changed = edit_password_file(FILE, {
            "bob": [("SCRAM-SHA-512", new), ("SCRAM-SHA-256", None)],
            "alice": [("SCRAM-SHA-256", None)],
        })
        self.assertEqual(refused["bob"][0], errors.RESOURCE_NOT_FOUND)
        self.assertEqual(list(changed), ["alice"])
        self.assertEqual(parse_password_file(text)["bob"], parse_password_file(FILE)["bob"])

    def test_salt_of_pbkdf2_line_not_reused(self):
        """
        A SCRAM-SHA-512 credential with the salt and iterations of the
        user's C{$7$} line is refused: the C{$7$} digest would be its salted
        password.
        """
        parts = parse_password_file(FILE)["bob"][0].split("$")
        entry = "$scram-sha-512${}${}$AAAA$AAAA".format(parts[2], parts[3])
        text, refused, changed = edit_password_file(FILE, {"bob": [("SCRAM-SHA-512", entry)]})
        self.assertEqual(refused["bob"][0], errors.UNACCEPTABLE_CREDENTIAL)
        self.assertEqual(changed, {})


class Harness:
    def __init__(self, password_file=None, rules=(), default="allow"):
        users = {}
        if password_file is not None:
            with open(password_file) as f:
                users = parse_password_file(f.read())
        self.authenticator = Authenticator(users, allow_anonymous=True)
        self.authenticator.password_file = password_file
        self.params = kafka_params(Clock(), authenticator=self.authenticator, acl=list(rules),
                                   acl_default=default)
        self.service = KafkaService(self.params)
        self.factory = self.service.listeners[0].factory

    def client(self, user=None, port=40000):
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        c = FakeClient(proto, ("127.0.0.1", port))
        proto.user = user
        return c


class ApiTests(SynchronousTestCase):
    """
    The two APIs through L{robustmq.kafka.protocol.KafkaProtocol}, with the
    error codes Apache Kafka gives.
    """

    def setUp(self):
        self.path = self.mktemp()
        with open(self.path, "w") as f:
            f.write(FILE)
        os.chmod(self.path, 0o644)
        self.h = Harness(self.path)
        self.c = self.h.client()

    def describe(self, *names, client=None):
        users = None if names == (None,) else [{"name": n} for n in names]
        return (client or self.c).call(DESCRIBE, 0, body(DESCRIBE, users=users))

    def alter(self, deletions=(), upsertions=(), client=None):
        return (client or self.c).call(ALTER, 0, body(
            ALTER, deletions=list(deletions), upsertions=list(upsertions)))

    def test_served(self):
        self.assertEqual(SERVED_VERSIONS[DESCRIBE], (0, 0))
        self.assertEqual(SERVED_VERSIONS[ALTER], (0, 0))

    def test_describe(self):
        r = self.describe()
        self.assertEqual(r["error_code"], 0)
        self.assertEqual(
            [(x["user"], x["error_code"], x["credential_infos"]) for x in r["results"]],
            [("alice", 0, [{"mechanism": SHA256, "iterations": 4096}])])
        self.assertEqual(self.describe(None)["results"], r["results"])
        r = self.describe("bob", "alice", "nobody", "", "alice")
        self.assertEqual([(x["user"], x["error_code"]) for x in r["results"]], [
            ("bob", errors.RESOURCE_NOT_FOUND), ("alice", errors.DUPLICATE_RESOURCE),
            ("nobody", errors.RESOURCE_NOT_FOUND), ("", errors.RESOURCE_NOT_FOUND)])
        self.assertIn("does not exist: bob", r["results"][0]["error_message"])

    def test_upsert_and_delete(self):
        """
        An upsertion writes StoredKey and ServerKey (never the salted
        password) to the file, mode 0600, keeping every other line; the
        authenticator serves it at once; a deletion removes it.
        """
        up = upsertion("carol", b"carol-pw", iterations=8192)
        r = self.alter(upsertions=[up, upsertion("alice", b"new", SHA256, 4096)])
        self.assertEqual(results(r), {"carol": (0, None), "alice": (0, None)})
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        with open(self.path) as f:
            text = f.read()
        self.assertTrue(text.startswith("# robustmq users\n"))
        self.assertIn("# the end\n", text)
        self.assertNotIn(base64.b64encode(up["salted_password"]).decode(), text)
        users = parse_password_file(text)
        self.assertEqual(users["bob"], parse_password_file(FILE)["bob"])
        self.assertEqual(len(users["alice"]), 2)
        self.assertEqual(users["carol"][0].split("$")[1:3], ["scram-sha-512", "8192"])
        creds = self.h.authenticator.scram_credentials("carol", "SCRAM-SHA-512")
        self.assertEqual(creds, Authenticator(users).scram_credentials("carol", "SCRAM-SHA-512"))
        self.assertEqual(creds[:2], (up["salt"], 8192))
        # The keys are those of the password: a SCRAM exchange with it succeeds.
        from robustmq.kafka.sasl import scram_credentials
        self.assertEqual(creds, scram_credentials("carol-pw", "SCRAM-SHA-512", up["salt"], 8192))
        r = self.describe("carol", "alice")
        self.assertEqual([x["credential_infos"] for x in r["results"]], [
            [{"mechanism": SHA512, "iterations": 8192}],
            [{"mechanism": SHA256, "iterations": 4096}]])

        r = self.alter(deletions=[deletion("carol"), deletion("alice", SHA256)])
        self.assertEqual(results(r), {"carol": (0, None), "alice": (0, None)})
        self.assertIsNone(self.h.authenticator.scram_credentials("carol", "SCRAM-SHA-512"))
        self.assertIsNone(self.h.authenticator.scram_credentials("alice", "SCRAM-SHA-256"))
        self.assertFalse(self.h.authenticator.user_exists("carol"))
        with open(self.path) as f:
            users = parse_password_file(f.read())
        self.assertEqual(sorted(users), ["alice", "bob"])
        self.assertEqual(self.describe()["results"], [])

    def test_error_codes(self):
        before = open(self.path).read()
        r = self.alter(
            deletions=[deletion("alice", SHA512), deletion("dave", 7), deletion("")],
            upsertions=[upsertion("few", iterations=4095), upsertion("many", iterations=16385),
                        upsertion("twice"), upsertion("twice"), upsertion("a:b"),
                        upsertion("bad-mech", mechanism=0), upsertion("nosalt", salt=b""),
                        dict(upsertion("short"), salted_password=b"x")])
        self.assertEqual({u: c for u, (c, _) in results(r).items()}, {
            "alice": errors.RESOURCE_NOT_FOUND,
            "dave": errors.UNSUPPORTED_SASL_MECHANISM,
            "": errors.UNACCEPTABLE_CREDENTIAL,
            "few": errors.UNACCEPTABLE_CREDENTIAL,
            "many": errors.UNACCEPTABLE_CREDENTIAL,
            "twice": errors.DUPLICATE_RESOURCE,
            "a:b": errors.UNACCEPTABLE_CREDENTIAL,
            "bad-mech": errors.UNSUPPORTED_SASL_MECHANISM,
            "nosalt": errors.UNACCEPTABLE_CREDENTIAL,
            "short": errors.UNACCEPTABLE_CREDENTIAL,
        })
        self.assertEqual(results(r)["few"][1], "Too few iterations")
        self.assertEqual(results(r)["many"][1], "Too many iterations")
        self.assertEqual(open(self.path).read(), before)
        # Two mechanisms of one user in one request are fine; one failing
        # change of a user leaves all of that user's unchanged.
        r = self.alter(deletions=[deletion("bob")],
                       upsertions=[upsertion("bob", mechanism=SHA256),
                                   upsertion("erin", mechanism=SHA256), upsertion("erin")])
        self.assertEqual(results(r), {
            "bob": (errors.RESOURCE_NOT_FOUND,
                    "Attempt to delete a user credential that does not exist"),
            "erin": (0, None)})
        self.assertIsNone(self.h.authenticator.scram_credentials("bob", "SCRAM-SHA-256"))
        self.assertEqual(len(self.h.authenticator.scram_iterations()["erin"]), 2)

    def test_no_password_file(self):
        """
        Without a password file each user is answered SECURITY_DISABLED
        with a message naming the setting; validation errors come first.
        """
        h = Harness(None)
        c = h.client()
        r = self.alter(client=c, upsertions=[upsertion("carol"), upsertion("x", iterations=1)])
        self.assertEqual(results(r)["carol"][0], errors.SECURITY_DISABLED)
        self.assertIn("password_file", results(r)["carol"][1])
        self.assertEqual(results(r)["x"][0], errors.UNACCEPTABLE_CREDENTIAL)
        self.assertIsNone(h.authenticator.scram_credentials("carol", "SCRAM-SHA-512"))
        self.assertEqual(self.describe(client=c)["results"], [])

    def test_acl(self):
        """
        Describe needs describe on the cluster, alter needs alter on it.
        """
        rules = [{"permission": "allow", "action": "alter", "cluster": True, "user": "admin"}]
        h = Harness(self.path, rules, default="deny")
        bob, admin = h.client("bob"), h.client("admin", 40001)
        r = self.describe(client=bob)
        self.assertEqual((r["error_code"], r["results"]), (errors.CLUSTER_AUTHORIZATION_FAILED, []))
        r = self.describe("alice", client=bob)
        self.assertEqual(r["error_code"], errors.CLUSTER_AUTHORIZATION_FAILED)
        self.assertEqual([(x["user"], x["error_code"], x["credential_infos"])
                          for x in r["results"]],
                         [("alice", errors.CLUSTER_AUTHORIZATION_FAILED, [])])
        r = self.alter(client=bob, deletions=[deletion("alice", SHA256)],
                       upsertions=[upsertion("bob")])
        self.assertEqual({u: c for u, (c, _) in results(r).items()}, {
            "alice": errors.CLUSTER_AUTHORIZATION_FAILED,
            "bob": errors.CLUSTER_AUTHORIZATION_FAILED})
        self.assertIsNone(h.authenticator.scram_credentials("bob", "SCRAM-SHA-512"))
        self.assertEqual(self.describe(client=admin)["error_code"], 0)
        self.assertEqual(results(self.alter(client=admin, upsertions=[upsertion("bob")])),
                         {"bob": (0, None)})

    def test_cached_success_forgotten(self):
        """
        A remembered PLAIN success of a changed user is forgotten: for a
        user whose only line is SCRAM, the new credential decides.
        """
        a = self.h.authenticator
        self.alter(upsertions=[upsertion("carol", b"old")])
        self.assertTrue(self.successResultOf(a.authenticate("carol", "old")))
        self.alter(upsertions=[upsertion("carol", b"new")])
        self.assertFalse(self.successResultOf(a.authenticate("carol", "old")))
        self.assertTrue(self.successResultOf(a.authenticate("carol", "new")))

    def test_bad_file_refused(self):
        """
        A password file that no longer parses is not rewritten: the users
        get UNKNOWN_SERVER_ERROR and the file is left as it is.
        """
        with open(self.path, "a") as f:
            f.write("garbage\n")
        before = open(self.path).read()
        r = self.alter(upsertions=[upsertion("carol")])
        self.assertEqual(results(r)["carol"][0], errors.UNKNOWN_SERVER_ERROR)
        self.assertEqual(open(self.path).read(), before)
        self.assertEqual(len(self.flushLoggedErrors()), 0)


class ClientTests(TestCase):
    """
    confluent-kafka's AdminClient against the real broker on 127.0.0.1 port
    0 with SASL: a SCRAM-SHA-512 credential created through the API logs a
    producer in; deleted, the login fails.
    """

    timeout = 120
    if confluent_kafka is None:
        skip = "confluent-kafka is not installed"

    @inlineCallbacks
    def setUp(self):
        reactor.suggestThreadPoolSize(12)
        self.path = os.path.abspath(self.mktemp())
        for user in ("admin", "bob"):
            self.assertEqual(passwd(["passwd", self.path, user, user + "-pw"]), 0)
        with open(self.path, "a") as f:
            f.write("# kept\n")
        config = parse_config({
            "node": {"data_dir": self.mktemp(), "shutdown_grace_s": 5},
            "mqtt_runtime": {"network": {"listeners": []}},
            "amqp_runtime": {"network": {"listeners": []}},
            "admin": {"listeners": []},
            "kafka_runtime": {"network": {"listeners": ["tcp:0:interface=127.0.0.1"]}},
            "security": {"allow_anonymous": False, "password_file": self.path,
                         "acl_default": "allow", "acl": [
                             {"permission": "allow", "action": "alter", "cluster": True,
                              "user": "admin"}]},
        })
        self.server = BrokerServer(config, reactor=reactor)
        self.server.privilegedStartService()
        self.server.startService()
        self.addCleanup(lambda: self.server.stopService() if self.server.running else None)
        yield self.server.ready
        self.bootstrap = "127.0.0.1:{}".format(self.server.node.bound_port("kafka", 0))

    def conf(self, user, password, mechanism="PLAIN"):
        return {"bootstrap.servers": self.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": mechanism, "sasl.username": user, "sasl.password": password}

    def admin(self, user="admin"):
        from confluent_kafka.admin import AdminClient

        return AdminClient(self.conf(user, user + "-pw"))

    def produce(self, user, password):
        """
        The delivery error of one message produced as C{user} with
        SCRAM-SHA-512 (L{None}: delivered), and the client errors seen.
        """
        from confluent_kafka import Producer

        seen = []
        conf = self.conf(user, password, "SCRAM-SHA-512")
        conf.update({"message.timeout.ms": 6000,
                     "error_cb": lambda e: seen.append(e.code())})
        producer = Producer(conf)
        reports = []
        producer.produce("scram-topic", b"v",
                         on_delivery=lambda e, m: reports.append(e and e.code()))
        producer.flush(10)
        return list(reports), list(seen)

    @inlineCallbacks
    def test_create_login_delete(self):
        from confluent_kafka.admin import (
            ScramCredentialInfo, ScramMechanism, UserScramCredentialDeletion,
            UserScramCredentialUpsertion,
        )

        from robustmq.kafka import scramapi

        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
        writers = []

        def write_private(path, text):
            writers.append(threading.current_thread() is threading.main_thread())
            return real_write(path, text)

        real_write = scramapi.write_private
        self.patch(scramapi, "write_private", write_private)

        def create():
            admin = self.admin()
            futures = admin.alter_user_scram_credentials(
                [UserScramCredentialUpsertion("carol", info, b"carol-pw")])
            return futures["carol"].result(15)

        yield deferToThread(create)
        # Written off the reactor thread.
        self.assertEqual(writers, [False])
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        with open(self.path) as f:
            text = f.read()
        self.assertTrue(text.rstrip("\n").endswith("carol:" + text.split("carol:")[1].strip()))
        self.assertIn("# kept\n", text)
        self.assertEqual(sorted(parse_password_file(text)), ["admin", "bob", "carol"])

        def describe():
            admin = self.admin()
            d = admin.describe_user_scram_credentials(["carol"])["carol"].result(15)
            return [(i.mechanism, i.iterations) for i in d.scram_credential_infos]

        self.assertEqual((yield deferToThread(describe)), [(ScramMechanism.SCRAM_SHA_512, 8192)])
        reports, _ = yield deferToThread(self.produce, "carol", "carol-pw")
        self.assertEqual(reports, [None])

        def delete():
            admin = self.admin()
            futures = admin.alter_user_scram_credentials(
                [UserScramCredentialDeletion("carol", ScramMechanism.SCRAM_SHA_512)])
            return futures["carol"].result(15)

        yield deferToThread(delete)
        reports, seen = yield deferToThread(self.produce, "carol", "carol-pw")
        self.assertNotEqual(reports, [None])
        self.assertTrue(KafkaError._AUTHENTICATION in seen, seen)
        with open(self.path) as f:
            text = f.read()
        self.assertEqual(sorted(parse_password_file(text)), ["admin", "bob"])
        self.assertIn("# kept\n", text)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    @inlineCallbacks
    def test_errors_and_acl(self):
        from confluent_kafka.admin import (
            ScramCredentialInfo, ScramMechanism, UserScramCredentialDeletion,
            UserScramCredentialUpsertion,
        )

        def codes(user, alterations):
            admin = self.admin(user)
            futures = admin.alter_user_scram_credentials(alterations)
            out = {}
            for name, f in futures.items():
                try:
                    f.result(15)
                    out[name] = None
                except KafkaException as e:
                    out[name] = e.args[0].code()
            return out

        few = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 1000)
        many = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 20000)
        got = yield deferToThread(codes, "admin", [
            UserScramCredentialUpsertion("few", few, b"pw"),
            UserScramCredentialUpsertion("many", many, b"pw"),
            UserScramCredentialDeletion("nobody", ScramMechanism.SCRAM_SHA_512)])
        self.assertEqual(got, {"few": KafkaError.UNACCEPTABLE_CREDENTIAL,
                               "many": KafkaError.UNACCEPTABLE_CREDENTIAL,
                               "nobody": KafkaError.RESOURCE_NOT_FOUND})

        ok = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
        got = yield deferToThread(codes, "bob", [
            UserScramCredentialUpsertion("bob", ok, b"pw")])
        self.assertEqual(got, {"bob": KafkaError.CLUSTER_AUTHORIZATION_FAILED})

        def describe(user, users):
            try:
                admin = self.admin(user)
                result = admin.describe_user_scram_credentials(users)
                if users is None:
                    return sorted(result.result(15))
                return {u: f.result(15) for u, f in result.items()}
            except KafkaException as e:
                return e.args[0].code()

        self.assertEqual((yield deferToThread(describe, "admin", None)), ["admin", "bob"])
        got = yield deferToThread(describe, "admin", ["nobody"])
        self.assertEqual(got, KafkaError.RESOURCE_NOT_FOUND)

        # bob may not describe the cluster (the rule naming it is admin's).
        # kafka-python: librdkafka 2.x crashes on this response's
        # request-level error, Apache Kafka's as ours.
        def kafka_python_describe():
            from kafka.admin import KafkaAdminClient

            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap, security_protocol="SASL_PLAINTEXT",
                sasl_mechanism="PLAIN", sasl_plain_username="bob",
                sasl_plain_password="bob-pw", request_timeout_ms=10000)
            try:
                return admin.describe_user_scram_credentials()
            except Exception as e:
                return e
            finally:
                admin.close()

        got = yield deferToThread(kafka_python_describe)
        from kafka.errors import ClusterAuthorizationFailedError

        self.assertIsInstance(got, ClusterAuthorizationFailedError)
        with open(self.path) as f:
            self.assertEqual(sorted(parse_password_file(f.read())), ["admin", "bob"])
