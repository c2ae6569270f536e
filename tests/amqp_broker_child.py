# -*- test-case-name: tests.test_amqp_durable -*-
"""
A broker in a child process for the crash tests of the AMQP broker.

Usage: C{python amqp_broker_child.py DATA_DIR [FSYNC_POLICY]}

Runs a broker with only an AMQP listener on 127.0.0.1 port 0 and storage in
C{DATA_DIR}; prints C{port <n>} once it serves clients, then runs until it
is killed.
"""

import os
import sys


def main(data_dir, policy):
    from twisted.internet import reactor

    from robustmq.config import parse_config
    from robustmq.server import BrokerServer

    config = parse_config({
        "node": {"data_dir": data_dir, "shutdown_grace_s": 5},
        "mqtt_runtime": {"network": {"listeners": []}},
        "kafka_runtime": {"network": {"listeners": []}},
        "amqp_runtime": {"network": {"listeners": ["tcp:0:interface=127.0.0.1"]}},
        "admin": {"listeners": []},
        "storage": {"fsync_policy": policy},
    })
    broker = BrokerServer(config, reactor=reactor)

    def ready(_):
        port = broker.node.bound_port("amqp")
        os.write(1, b"port %d\n" % (port,))

    def start():
        broker.privilegedStartService()
        broker.startService()
        broker.ready.addCallback(ready)

    reactor.callWhenRunning(start)
    reactor.run()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "interval_ms")
