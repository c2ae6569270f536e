"""
Tests for the admin HTTP resources in L{robustmq.admin.service}.
"""

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from robustmq.admin.params import AdminParams
from robustmq.admin.service import build_site
from robustmq.connections import ConnectionManager
from robustmq.metrics import Metrics
from robustmq.node import NodeCache
from robustmq.ratelimit import RateLimiter
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
