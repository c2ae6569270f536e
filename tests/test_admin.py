"""
Tests for the admin HTTP resources in L{robustmq.admin.service}.
"""

import base64
import json
import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from robustmq.admin.params import AdminParams
from robustmq.admin.service import AdminGuard, build_site
from robustmq.config import parse_config
from robustmq.connections import ConnectionManager
from robustmq.metrics import Metrics
from robustmq.node import NodeCache
from robustmq.ratelimit import RateLimiter
from robustmq.server import BrokerServer
from robustmq.shutdown import Shutdown


class FakeConn:
    def close_gracefully(self):
        pass


class AdminTests(TestCase):
    def setUp(self):
        clock = Clock()
        self.status = "starting"
        self.connections = ConnectionManager(clock, RateLimiter(clock))
        self.node = NodeCache(1, 0.0)
        params = AdminParams(
            clock, None, self.connections, self.node, Metrics(self.connections, self.node),
            Shutdown(), lambda: self.status,
        )
        self.site = build_site(params)

    def get(self, path, args=None):
        segments = path.strip("/").split("/")
        request = DummyRequest([s.encode() for s in segments])
        request.args = {k.encode(): [v.encode()] for k, v in (args or {}).items()}
        resource = self.site.getResourceFor(request)
        body = resource.render(request)
        return request.responseCode or 200, request, body

    def test_health_states(self):
        """
        C{/health} answers 503 while starting or stopping, 200 when ok.
        """
        self.node.set_listener("mqtt", "tcp:1883", "0.0.0.0:1883", "listening")
        for status, code in (("starting", 503), ("ok", 200), ("stopping", 503)):
            self.status = status
            got, request, body = self.get("/health")
            self.assertEqual(got, code)
            data = json.loads(body)
            self.assertEqual(data["status"], status)
            self.assertEqual(data["listeners"], [{
                "protocol": "mqtt", "endpoint": "tcp:1883", "address": "0.0.0.0:1883",
                "state": "listening",
            }])
            self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                             [b"application/json"])

    def test_connections_filter(self):
        a = self.connections.register(FakeConn(), "mqtt", "tcp:1883", "1.1.1.1:1", "1.1.1.1", False)
        a.client_id = "sensor-1"
        self.connections.register(FakeConn(), "kafka", "tcp:9092", "1.1.1.1:2", "1.1.1.1", True)
        _, _, body = self.get("/api/connections")
        self.assertEqual(len(json.loads(body)["connections"]), 2)
        _, _, body = self.get("/api/connections", {"protocol": "mqtt"})
        conns = json.loads(body)["connections"]
        self.assertEqual([c["client_id"] for c in conns], ["sensor-1"])
        self.assertEqual(conns[0]["listener"], "tcp:1883")

    def test_metrics(self):
        code, request, body = self.get("/metrics")
        self.assertIn(b"robustmq_connections", body)
        self.assertTrue(request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))


def _basic(user, password):
    return b"Basic " + base64.b64encode("{}:{}".format(user, password).encode())


class AdminAuthTests(TestCase):
    """
    The real broker's admin listener with a password file and a bearer
    token, driven with twisted.web's HTTP client.
    """

    timeout = 30

    @inlineCallbacks
    def setUp(self):
        from robustmq.security import main as passwd

        path = os.path.abspath(self.mktemp())
        for user in ("alice", "bob"):
            self.assertEqual(passwd(["passwd", path, user, user + "-pw"]), 0)
        config = parse_config({
            "node": {"data_dir": self.mktemp(), "shutdown_grace_s": 5},
            "mqtt_runtime": {"network": {"listeners": []}},
            "kafka_runtime": {"network": {"listeners": []}},
            "amqp_runtime": {"network": {"listeners": []}},
            "admin": {"listeners": ["tcp:0:interface=127.0.0.1"], "users": ["alice"],
                      "token": "s3cret-token"},
            "security": {"password_file": path},
        })
        self.broker = BrokerServer(config, reactor=reactor)
        self.broker.privilegedStartService()
        self.broker.startService()
        self.addCleanup(lambda: self.broker.stopService() if self.broker.running else None)
        yield self.broker.ready
        self.port = self.broker.node.bound_port("admin", 0)

    @inlineCallbacks
    def get(self, path, authorization=None):
        headers = Headers()
        if authorization is not None:
            headers.addRawHeader(b"authorization", authorization)
        response = yield Agent(reactor).request(
            b"GET", "http://127.0.0.1:{}{}".format(self.port, path).encode(), headers)
        body = yield readBody(response)
        return response.code, response.headers, body

    @inlineCallbacks
    def test_credentials_required_but_for_health(self):
        """
        /health is open; /metrics and /api need HTTP Basic of an admin user
        or the bearer token, else 401 with both challenges; each refusal is
        logged and counted.
        """
        events = []
        self.patch(AdminGuard, "log", Logger(observer=events.append))
        code, _, body = yield self.get("/health")
        self.assertEqual(code, 200)
        for path in ("/metrics", "/api/connections", "/", "/nonexistent"):
            code, headers, _ = yield self.get(path)
            self.assertEqual(code, 401, path)
            self.assertEqual(headers.getRawHeaders(b"www-authenticate"), [
                b'Basic realm="robustmq admin", charset="UTF-8"',
                b'Bearer realm="robustmq admin"'])
        refused = [
            _basic("alice", "wrong"),        # wrong password
            _basic("bob", "bob-pw"),         # right password, not an admin user
            _basic("nobody", "x"),           # unknown user
            b"Bearer not-the-token",
            b"Basic !!!",
            b"Digest whatever",
        ]
        for authorization in refused:
            code, _, body = yield self.get("/api/connections", authorization)
            self.assertEqual(code, 401, authorization)
            self.assertEqual(json.loads(body), {"error": "unauthorized"})
        code, _, body = yield self.get("/api/connections", _basic("alice", "alice-pw"))
        self.assertEqual((code, json.loads(body)), (200, {"connections": []}))
        code, _, body = yield self.get("/metrics", b"Bearer s3cret-token")
        self.assertEqual(code, 200)
        self.assertIn(
            b'robustmq_admin_requests_refused_total{reason="no_credentials"} 4.0', body)
        self.assertIn(
            b'robustmq_admin_requests_refused_total{reason="bad_credentials"} 6.0', body)
        warnings = [formatEvent(e) for e in events if "refused" in formatEvent(e)]
        self.assertEqual(len(warnings), 10)
        self.assertIn("GET /api/connections refused: user 'bob' is not in [admin] users",
                      warnings[5])

    @inlineCallbacks
    def test_basic_checked_off_the_event_loop(self):
        """
        HTTP Basic goes through the shared authenticator (its thread pool,
        its throttling), as every login.
        """
        calls = []
        authenticator = self.broker.authenticator
        real = authenticator.authenticate

        def authenticate(user, password, host=None):
            calls.append((user, host))
            return real(user, password, host)

        self.patch(authenticator, "authenticate", authenticate)
        self.assertIsNotNone(authenticator.pool)
        self.assertTrue(authenticator.pool.started)
        code, _, _ = yield self.get("/metrics", _basic("alice", "alice-pw"))
        self.assertEqual(code, 200)
        self.assertEqual(calls, [("alice", "127.0.0.1")])


class AdminDefaultsTests(TestCase):
    def test_loopback_by_default(self):
        """
        The admin listener of the embedded defaults is on 127.0.0.1 only.
        """
        self.assertEqual(parse_config({}).admin.listeners, ("tcp:8080:interface=127.0.0.1",))

    def test_admin_users_must_be_in_the_password_file(self):
        from robustmq.config import ConfigError
        from robustmq.security import main as passwd
        from robustmq.tap import check_password_file

        path = os.path.abspath(self.mktemp())
        passwd(["passwd", path, "alice", "pw"])
        config = parse_config({"security": {"password_file": path},
                               "admin": {"users": ["alice", "mallory"]}})
        e = self.assertRaises(ConfigError, check_password_file, config.security, config.admin)
        self.assertEqual(e.problems, [
            "config error: admin.users[1]: 'mallory' is not a user of " + path])
        config = parse_config({"admin": {"users": ["alice"]}})
        e = self.assertRaises(ConfigError, check_password_file, config.security, config.admin)
        self.assertEqual(e.problems, [
            "config error: admin.users[0]: 'alice' needs security.password_file"])
