"""
Tests for L{robustmq.server.BrokerServer} on a real reactor with listeners on
127.0.0.1 port 0: start, health, listeners, shutdown, embedding, adding a
protocol.
"""

import json
import os
import socket

from attrs import frozen
from twisted.application.service import IService, MultiService
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from zope.interface.verify import verifyObject

from robustmq import interfaces
from robustmq.config import NetworkConfig, RuntimeConfig, parse_config
from robustmq.network.placeholder import placeholder_factory
from robustmq.network.protocol import BrokerFactory, FramedProtocol
from robustmq.network.service import ListenError, ProtocolService
from robustmq.server import BrokerServer

LOCAL = "tcp:0:interface=127.0.0.1"


def local_config(data_dir, **extra):
    data = {
        "node": {"data_dir": data_dir, "shutdown_grace_s": 5},
        "mqtt_runtime": {"network": {"listeners": [LOCAL]}},
        "kafka_runtime": {"network": {"listeners": [LOCAL]}},
        "amqp_runtime": {"network": {"listeners": [LOCAL]}},
        "admin": {"listeners": [LOCAL]},
    }
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data)


class Collect(Protocol):
    def __init__(self):
        self.data = b""
        self.lost = Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost.callback(self.data)


def port_of(broker, protocol_name, index=0):
    return broker.node.bound_port(protocol_name, index)


@inlineCallbacks
def http_get(port, path):
    agent = Agent(reactor)
    response = yield agent.request(b"GET", "http://127.0.0.1:{}{}".format(port, path).encode())
    body = yield readBody(response)
    return response.code, response.headers, body


class BrokerTestCase(TestCase):
    timeout = 30

    @inlineCallbacks
    def start(self, broker):
        broker.privilegedStartService()
        broker.startService()
        self.addCleanup(self.stop, broker)
        yield broker.ready
        return broker

    def stop(self, broker):
        if broker.running:
            return broker.stopService()


class BrokerServerTests(BrokerTestCase):
    @inlineCallbacks
    def test_start_health_stop(self):
        """
        Every listener is bound and listed in C{/health}; stopping turns the
        status to stopping, closes the listeners and fires.
        """
        broker = BrokerServer(local_config(self.mktemp()), reactor=reactor)
        self.assertTrue(IService.providedBy(broker))
        yield self.start(broker)
        admin = port_of(broker, "admin")
        code, headers, body = yield http_get(admin, "/health")
        self.assertEqual(code, 200)
        health = json.loads(body)
        self.assertEqual(health["status"], "ok")
        protocols = sorted(l["protocol"] for l in health["listeners"])
        self.assertEqual(protocols, ["admin", "amqp", "kafka", "mqtt"])
        for listener in health["listeners"]:
            self.assertEqual(listener["state"], "listening")
            self.assertEqual(listener["endpoint"], LOCAL)
            self.assertTrue(listener["address"].startswith("127.0.0.1:"))
        yield broker.stopService()
        self.assertEqual(broker.status, "stopping")
        for listener in broker.node.listeners():
            self.assertEqual(listener["state"], "stopped")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", admin), timeout=2).close()

    @inlineCallbacks
    def test_metrics_and_connections(self):
        broker = BrokerServer(local_config(self.mktemp()), reactor=reactor)
        yield self.start(broker)
        admin = port_of(broker, "admin")
        code, headers, body = yield http_get(admin, "/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"robustmq_connections_rejected_total", body)
        self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        code, _, body = yield http_get(admin, "/api/connections?protocol=mqtt")
        self.assertEqual(json.loads(body), {"connections": []})

    def test_interfaces(self):
        """
        Every shared object provides its interface.
        """
        broker = BrokerServer(local_config(self.mktemp()), reactor=reactor)
        verifyObject(interfaces.IConnectionManager, broker.connections)
        verifyObject(interfaces.IRateLimiter, broker.rate_limiter)
        verifyObject(interfaces.INodeCache, broker.node)
        verifyObject(interfaces.IMetrics, broker.metrics)
        verifyObject(interfaces.IAuthenticator, broker.authenticator)
        verifyObject(interfaces.IAuthorizer, broker.authorizer)
        verifyObject(interfaces.IShutdown, broker.shutdown)
        verifyObject(interfaces.IStorageDriverManager, broker.storage)
        verifyObject(interfaces.IOffsetManager, broker.offsets)
        verifyObject(interfaces.IMetaStore, broker.meta)

    def test_port_in_use(self):
        """
        A listener that cannot bind names itself; nothing stays bound.
        """
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        config = local_config(
            self.mktemp(),
            kafka_runtime={"network": {"listeners": [LOCAL, "tcp:{}:interface=127.0.0.1".format(port)]}},
        )
        broker = BrokerServer(config, reactor=reactor)
        e = self.assertRaises(ListenError, broker.privilegedStartService)
        self.assertEqual(len(e.problems), 1)
        self.assertIn("kafka_runtime.network.listeners[1]", e.problems[0])
        self.assertIn(str(port), e.problems[0])
        for listener in broker.node.listeners():
            self.assertIn(listener["state"], ("stopped", "failed"))

    @inlineCallbacks
    def test_embedding(self):
        """
        A user adds the broker to their own MultiService next to their
        other services; stopping their service stops the broker.
        """
        app = MultiService()
        broker = BrokerServer(local_config(self.mktemp()), reactor=reactor)
        broker.setServiceParent(app)
        app.privilegedStartService()
        app.startService()
        yield broker.ready
        self.assertEqual(broker.status, "ok")
        yield app.stopService()
        self.assertFalse(broker.running)

    @inlineCallbacks
    def test_shutdown_request(self):
        """
        Any service may stop the whole broker through the shared hook.
        """
        broker = BrokerServer(local_config(self.mktemp()), reactor=reactor)
        yield self.start(broker)
        broker.shutdown.request("test")
        yield broker.stopService()
        self.assertFalse(broker.running)
        self.assertEqual(broker.status, "stopping")


# A throwaway protocol added the documented way: its own Params class, its
# own service, and one line in BrokerServer.build_protocols.


@frozen
class EchoParams:
    reactor: object
    config: object
    shutdown_grace_s: float
    connections: object
    metrics: object
    node: object


class EchoProtocol(FramedProtocol):
    def frame_length(self, buf, offset):
        i = buf.find(b"\n", offset)
        return None if i < 0 else i + 1 - offset

    def frame_received(self, buf, start, end):
        self.send(bytes(buf[start:end]))

    def close_gracefully(self):
        self.send(b"bye\n")
        FramedProtocol.close_gracefully(self)


class EchoFactory(BrokerFactory):
    protocol = EchoProtocol
    protocol_name = "echo"


class EchoService(ProtocolService):
    protocol_name = "echo"
    factory_class = EchoFactory


class BrokerWithEcho(BrokerServer):
    def build_protocols(self):
        BrokerServer.build_protocols(self)
        self.add_protocol(EchoService(EchoParams(
            self.reactor, self.echo_config, self.config.node.shutdown_grace_s,
            self.connections, self.metrics, self.node,
        )))


class ThrowawayProtocolTests(BrokerTestCase):
    @inlineCallbacks
    def test_added_protocol(self):
        """
        A new protocol needs a Params class, a service and one line in
        BrokerServer: it is then served, listed, counted and stopped
        gracefully like the built-in ones.
        """
        BrokerWithEcho.echo_config = RuntimeConfig(
            network=NetworkConfig(
                listeners=(LOCAL,), max_connections=1, max_frame_bytes=100,
                idle_timeout_s=30, outbound_buffer_bytes=1000,
            )
        )
        broker = BrokerWithEcho(local_config(self.mktemp()), reactor=reactor)
        yield self.start(broker)
        port = port_of(broker, "echo")
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Collect())
        client.transport.write(b"hello\nworld\n")
        code, _, body = yield http_get(port_of(broker, "admin"), "/api/connections?protocol=echo")
        conns = json.loads(body)["connections"]
        self.assertEqual(len(conns), 1)
        self.assertEqual(conns[0]["protocol"], "echo")
        # The listener limit of one connection applies to the new protocol.
        second = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Collect())
        yield second.lost
        self.assertEqual(broker.connections.count("echo"), 1)
        yield broker.stopService()
        data = yield client.lost
        self.assertEqual(data, b"hello\nworld\nbye\n")


class TransportsThroughBrokerTests(BrokerTestCase):
    """
    The base framed protocol of a broker protocol over TCP, TLS, WebSocket
    and secure WebSocket, driven by real clients.
    """

    @inlineCallbacks
    def test_four_transports(self):
        from autobahn.twisted.websocket import WebSocketClientFactory
        from twisted.internet.endpoints import SSL4ClientEndpoint
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        from tests.certs import make_test_pki
        from tests.test_transports import WSClient

        pki = make_test_pki(os.path.abspath(self.mktemp()))
        tls = "privateKey={}:certKey={}:interface=127.0.0.1".format(pki.server_key, pki.server_cert)
        BrokerWithEcho.echo_config = RuntimeConfig(
            network=NetworkConfig(
                listeners=(LOCAL, "ssl:0:" + tls, "ws:0:interface=127.0.0.1", "wss:0:" + tls),
                max_connections=10, max_frame_bytes=100, idle_timeout_s=30,
                outbound_buffer_bytes=1000,
            )
        )
        broker = BrokerWithEcho(local_config(self.mktemp()), reactor=reactor)
        yield self.start(broker)
        with open(pki.ca_cert, "rb") as f:
            client_tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(f.read()))

        tcp = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(broker, "echo", 0)), Collect())
        ssl = yield connectProtocol(
            SSL4ClientEndpoint(reactor, "127.0.0.1", port_of(broker, "echo", 1), client_tls),
            Collect())
        ws_clients = []
        for index, secure in ((2, False), (3, True)):
            url = "{}://127.0.0.1:{}/".format("wss" if secure else "ws", port_of(broker, "echo", index))
            factory = WebSocketClientFactory(url, reactor=reactor)
            factory.protocol = WSClient
            port = port_of(broker, "echo", index)
            if secure:
                endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, client_tls)
            else:
                endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
            client = yield endpoint.connect(factory)
            opened = yield client.opened
            self.assertTrue(opened)
            ws_clients.append(client)

        for client in ws_clients:
            client.sendMessage(b"ping\n", isBinary=True)
            echoed = yield client.receive_bytes(5)
            self.assertEqual(echoed, b"ping\n")

        code, _, body = yield http_get(port_of(broker, "admin"), "/api/connections?protocol=echo")
        conns = json.loads(body)["connections"]
        by_listener = {c["listener"]: c for c in conns}
        self.assertEqual(len(by_listener), 4)
        self.assertFalse(by_listener[LOCAL]["tls"])
        self.assertTrue(by_listener["ssl:0:" + tls]["tls"])
        self.assertFalse(by_listener["ws:0:interface=127.0.0.1"]["tls"])
        self.assertTrue(by_listener["wss:0:" + tls]["tls"])
        for c in conns:
            self.assertTrue(c["peer"].startswith("127.0.0.1:"), c)

        # Garbage (a frame over the limit) closes that connection only.
        tcp.transport.write(b"x" * 200)
        yield tcp.lost
        ssl.transport.write(b"still here\n")
        code, _, body = yield http_get(port_of(broker, "admin"), "/api/connections?protocol=echo")
        self.assertEqual(len(json.loads(body)["connections"]), 3)

        yield broker.stopService()
        data = yield ssl.lost
        self.assertEqual(data, b"still here\nbye\n")
        for client in ws_clients:
            yield client.closed


class PlaceholderService(ProtocolService):
    protocol_name = "later"
    factory_class = placeholder_factory("later")


class BrokerWithPlaceholder(BrokerServer):
    def build_protocols(self):
        BrokerServer.build_protocols(self)
        self.add_protocol(PlaceholderService(EchoParams(
            self.reactor, self.echo_config, self.config.node.shutdown_grace_s,
            self.connections, self.metrics, self.node,
        )))


class PlaceholderTests(BrokerTestCase):
    @inlineCallbacks
    def test_placeholder_connection_closed(self):
        """
        A protocol not served yet closes its connections; the broker stays up.
        """
        BrokerWithPlaceholder.echo_config = RuntimeConfig(
            network=NetworkConfig(
                listeners=(LOCAL,), max_connections=1, max_frame_bytes=100,
                idle_timeout_s=30, outbound_buffer_bytes=1000,
            )
        )
        broker = BrokerWithPlaceholder(local_config(self.mktemp()), reactor=reactor)
        yield self.start(broker)
        for _ in range(3):
            proto = yield connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(broker, "later")), Collect()
            )
            yield proto.lost
        self.assertEqual(broker.connections.count(), 0)
        self.assertEqual(broker.status, "ok")


class DataDirLockTests(BrokerTestCase):
    @inlineCallbacks
    def test_one_broker_per_data_dir(self):
        """
        A second broker on the same data_dir stops before binding anything;
        once the first has stopped, the directory is free again.
        """
        from robustmq.storage.errors import StorageError

        data = self.mktemp()
        first = BrokerServer(local_config(data), reactor=reactor)
        yield self.start(first)
        second = BrokerServer(local_config(data), reactor=reactor)
        e = self.assertRaises(StorageError, second.privilegedStartService)
        self.assertIn("in use by another process", str(e))
        self.assertEqual(second.node.listeners(), [])
        yield first.stopService()
        third = BrokerServer(local_config(data), reactor=reactor)
        yield self.start(third)
