# -*- test-case-name: tests.test_mqtt_protocol -*-
"""
Helpers of the MQTT tests: a broker on a memory reactor with connections on
L{StringTransport}s, and a client that feeds packets and decodes replies.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from robustmq.config import parse_config
from robustmq.connections import ConnectionManager
from robustmq.metrics import Metrics
from robustmq.mqtt.broker import Broker
from robustmq.mqtt.codec import Connect, decode_stream
from robustmq.mqtt.factory import MqttFactory
from robustmq.mqtt.journal import Journal
from robustmq.mqtt.params import MqttParams
from robustmq.node import NodeCache
from robustmq.ratelimit import RateLimiter
from robustmq.security import Authenticator, Authorizer
from robustmq.shutdown import Shutdown


def make_params(protocol=None, security=None, network=None, reactor=None,
                meta=None, users=None, authenticator=None, runtime=None):
    data = {"mqtt_runtime": {"network": dict(network or {}),
                             "protocol": dict(protocol or {}),
                             **(runtime or {})}}
    if security:
        data["security"] = security
    config = parse_config(data)
    reactor = reactor if reactor is not None else MemoryReactorClock()
    limiter = RateLimiter(reactor)
    node = NodeCache(1, reactor.seconds())
    connections = ConnectionManager(reactor, limiter)
    if authenticator is None:
        authenticator = Authenticator(users or {}, config.security.allow_anonymous)
    return MqttParams(
        reactor, config.mqtt_runtime, 5.0, connections, limiter, node,
        Metrics(connections, node), authenticator,
        Authorizer.from_config(config.security), None, meta, Shutdown(),
    )


class Harness:
    """
    A broker and its factory on a memory reactor.

    @param storage: a storage manager for the session journal (none by
        default).
    @param store: the session store (a L{robustmq.mqtt.store.MemoryStore}
        by default).
    """

    def __init__(self, storage=None, store=None, **kwargs):
        self.params = make_params(**kwargs)
        self.reactor = self.params.reactor
        journal = None
        if storage is not None:
            journal = Journal(storage, self.reactor)
        self.broker = Broker(self.params, store, journal=journal)
        self.factory = MqttFactory(self.params, "tcp:0", self.broker)
        self._ports = 40000

    def client(self, level=4, host="127.0.0.1"):
        self._ports += 1
        proto = self.factory.buildProtocol(
            IPv4Address("TCP", host, self._ports))
        transport = StringTransport(
            peerAddress=IPv4Address("TCP", host, self._ports))
        proto.makeConnection(transport)
        return Client(proto, transport, level)

    def counter(self, reason):
        return self.params.metrics.registry.get_sample_value(
            "robustmq_mqtt_messages_dropped_total", {"reason": reason}) or 0


class Client:
    """
    The client side of one connection.
    """

    def __init__(self, proto, transport, level):
        self.proto = proto
        self.transport = transport
        self.level = level
        self.closed = False

    def feed(self, data, one_byte_at_a_time=False):
        if one_byte_at_a_time:
            for i in range(len(data)):
                self.proto.dataReceived(data[i:i + 1])
        else:
            self.proto.dataReceived(data)

    def send(self, *packets, one_byte_at_a_time=False):
        data = b"".join(p.encode(self.level) for p in packets)
        self.feed(data, one_byte_at_a_time)

    def connect(self, client_id="c", **kwargs):
        kwargs.setdefault("protocol_level", self.level)
        self.send(Connect(client_id, **kwargs))
        return self.received()

    def received(self):
        """
        The packets the broker wrote since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        packets = [p for p, _ in decode_stream(data, 0, self.level)]
        return packets

    def lost(self):
        """
        Whether the broker closed (or aborted) the connection.
        """
        return self.transport.disconnecting or getattr(
            self.transport, "disconnected", False) or self.proto.closing

    def drop(self):
        """
        The network connection goes away.
        """
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure
        self.proto.connectionLost(Failure(ConnectionLost()))
