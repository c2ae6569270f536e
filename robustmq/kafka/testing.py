# -*- test-case-name: tests.test_kafka_protocol -*-
"""
Helpers for tests of the Kafka protocol: in-memory metadata and offsets, a
L{KafkaParams} over in-memory storage, a client that talks to a
L{KafkaProtocol} over a L{StringTransport}, a real broker on 127.0.0.1 port
0, and (as C{python -m robustmq.kafka.testing DATA_DIR PORT_FILE}) a broker
in a child process that writes its port to a file (C{-}: none) and prints
C{kafka-port N} on its standard output.
"""

import os
import struct
import sys

from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport

from robustmq.config import parse_config
from robustmq.connections import ConnectionManager
from robustmq.kafka import codec
from robustmq.kafka.params import KafkaParams
from robustmq.metrics import Metrics
from robustmq.node import NodeCache
from robustmq.ratelimit import RateLimiter
from robustmq.security import Authenticator, Authorizer
from robustmq.shutdown import Shutdown
from robustmq.storage.testing import memory_storage

LOCAL = "tcp:0:interface=127.0.0.1"


class MemoryMeta:
    """
    An L{robustmq.interfaces.IMetaStore} in memory.
    """

    def __init__(self):
        self.data = {}

    def put(self, namespace, key, value):
        self.data.setdefault(namespace, {})[key] = value
        return succeed(None)

    def get(self, namespace, key, default=None):
        return self.data.get(namespace, {}).get(key, default)

    def delete(self, namespace, key):
        self.data.get(namespace, {}).pop(key, None)
        return succeed(None)

    def items(self, namespace, prefix=""):
        return sorted((k, v) for k, v in self.data.get(namespace, {}).items()
                      if k.startswith(prefix))


class MemoryOffsets:
    """
    An L{robustmq.interfaces.IOffsetManager} in memory.
    """

    def __init__(self):
        self.committed = {}

    def commit_many(self, group, offsets):
        g = self.committed.setdefault(group, {})
        for shard, value in offsets.items():
            value = value if isinstance(value, tuple) else (value, "")
            g[shard] = value if len(value) == 3 else value + (-1,)
        return succeed(None)

    def fetch_group(self, group, leader_epochs=False):
        g = self.committed.get(group, {})
        return dict(g) if leader_epochs else {s: v[:2] for s, v in g.items()}

    def groups(self):
        return sorted(g for g, s in self.committed.items() if s)

    def delete_group(self, group):
        self.committed.pop(group, None)
        return succeed(None)

    def delete_offsets(self, group, shards):
        g = self.committed.get(group, {})
        for shard in shards:
            g.pop(shard, None)
        return succeed(None)

    def delete_shard(self, shard):
        for g in self.committed.values():
            g.pop(shard, None)
        return succeed(None)


def kafka_config(**kafka_runtime):
    """
    The C{[kafka_runtime]} section with the defaults, changed by
    C{kafka_runtime} (C{network} may be a dict of network keys).
    """
    section = {"network": {"listeners": [LOCAL]},
               # No initial rebalance delay unless a test asks for it.
               "group_initial_rebalance_delay_ms": 0}
    network = kafka_runtime.pop("network", {})
    section["network"].update(network)
    section.update(kafka_runtime)
    return parse_config({"kafka_runtime": section}).kafka_runtime


def kafka_params(reactor, storage=None, meta=None, offsets=None, users=None,
                 allow_anonymous=True, acl=(), acl_default="allow", authenticator=None,
                 **kafka_runtime):
    """
    A L{KafkaParams} over in-memory storage, metadata and offsets.

    @param acl: C{[[security.acl]]} rules, as dicts.
    """
    limiter = RateLimiter(reactor)
    node = NodeCache(1, reactor.seconds())
    connections = ConnectionManager(reactor, limiter, 0)
    connections.accepting = True
    return KafkaParams(
        reactor, kafka_config(**kafka_runtime), 5.0, connections, limiter, node,
        Metrics(connections, node),
        authenticator if authenticator is not None else Authenticator(
            users or {}, allow_anonymous),
        storage if storage is not None else memory_storage(reactor),
        offsets if offsets is not None else MemoryOffsets(),
        meta if meta is not None else MemoryMeta(), Shutdown(),
        Authorizer.from_config(parse_config(
            {"security": {"acl": list(acl), "acl_default": acl_default}}).security),
    )


class FakeClient:
    """
    A Kafka client over a L{StringTransport}: requests are encoded with the
    codec and fed to the protocol, responses are read back in order.
    """

    def __init__(self, protocol, peer=("127.0.0.1", 40000)):
        from twisted.internet.address import IPv4Address

        self.protocol = protocol
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 9092),
            peerAddress=IPv4Address("TCP", *peer),
        )
        protocol.makeConnection(self.transport)
        self.correlation_id = 0
        self.sent = []
        self._buf = b""

    def encode(self, api_key, version, body, client_id="test"):
        self.correlation_id += 1
        self.sent.append((api_key, version, self.correlation_id))
        return codec.encode_request(api_key, version, self.correlation_id, client_id, body)

    def send(self, api_key, version, body, one_byte_at_a_time=False):
        """
        Send one request.

        @return: its correlation id.
        """
        data = self.encode(api_key, version, body)
        if one_byte_at_a_time:
            for i in range(len(data)):
                self.protocol.dataReceived(data[i:i + 1])
        else:
            self.protocol.dataReceived(data)
        return self.correlation_id

    def responses(self):
        """
        The responses received since the last call, decoded:
        C{[(correlation_id, body)]}.
        """
        self._buf += self.transport.value()
        self.transport.clear()
        out = []
        while len(self._buf) >= 4:
            size = struct.unpack(">i", self._buf[:4])[0]
            if len(self._buf) < 4 + size:
                break
            frame, self._buf = self._buf[4:4 + size], self._buf[4 + size:]
            api_key, version, correlation_id = self.sent.pop(0)
            while correlation_id != struct.unpack(">i", frame[:4])[0]:
                api_key, version, correlation_id = self.sent.pop(0)
            header, body = codec.decode_response(api_key, version, frame)
            out.append((header["correlation_id"], body))
        return out

    def call(self, api_key, version, body):
        """
        Send one request and return the body of its response (which must
        come at once).
        """
        self.send(api_key, version, body)
        got = self.responses()
        if len(got) != 1:
            raise AssertionError("expected one response, got {!r}".format(got))
        return got[0][1]


def broker_config(data_dir, **kafka_runtime):
    """
    A whole config with only a Kafka listener on 127.0.0.1 port 0 (and no
    initial rebalance delay unless C{kafka_runtime} sets one).
    """
    section = {"network": {"listeners": [LOCAL]}, "group_initial_rebalance_delay_ms": 0}
    section.update(kafka_runtime)
    storage = section.pop("storage", {})
    return parse_config({
        "node": {"data_dir": data_dir, "shutdown_grace_s": 5},
        "mqtt_runtime": {"network": {"listeners": []}},
        "amqp_runtime": {"network": {"listeners": []}},
        "admin": {"listeners": []},
        "kafka_runtime": section,
        "storage": storage,
    })


def main(argv=None):
    """
    Run a broker with only a Kafka listener on 127.0.0.1 port 0 and write
    its port to C{PORT_FILE} once it serves clients.

    Usage: C{python -m robustmq.kafka.testing DATA_DIR PORT_FILE [FSYNC_POLICY
    [PORT]]} (an empty FSYNC_POLICY: the default; PORT: listen there rather
    than on port 0, so a restarted broker is where clients left it).
    """
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from robustmq.server import BrokerServer

    argv = sys.argv[1:] if argv is None else argv
    data_dir, port_file = argv[0], argv[1]
    storage = {"fsync_policy": argv[2]} if len(argv) > 2 and argv[2] else {}
    kafka_runtime = {}
    if len(argv) > 3:
        kafka_runtime["network"] = {
            "listeners": ["tcp:{}:interface=127.0.0.1".format(int(argv[3]))]}
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    broker = BrokerServer(broker_config(data_dir, storage=storage, **kafka_runtime),
                          reactor=reactor, stop_reactor_on_request=True)

    def ready(_):
        port = broker.node.bound_port("kafka", 0)
        if port_file != "-":
            tmp = port_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(port))
            os.replace(tmp, port_file)
        sys.stdout.write("kafka-port {}\n".format(port))
        sys.stdout.flush()

    broker.privilegedStartService()
    broker.startService()
    broker.ready.addCallback(ready)
    reactor.addSystemEventTrigger("before", "shutdown", broker.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
