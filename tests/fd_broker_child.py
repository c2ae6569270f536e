# -*- test-case-name: tests.test_fd_guard -*-
"""
A broker in a child process with a low limit of open files, for the tests
of the refusal of new connections near the limit.

Usage: C{python fd_broker_child.py DATA_DIR NOFILE FD_RESERVE MAX_OPEN_FILES}

Lowers C{RLIMIT_NOFILE} to C{NOFILE}, runs a broker with MQTT, Kafka, AMQP
and admin listeners on 127.0.0.1 port 0, prints C{ports <json>} once it
serves clients, logs to stderr, and stops on SIGTERM.
"""

import json
import os
import resource
import sys


def main(data_dir, nofile, reserve, max_open_files):
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from robustmq.config import parse_config
    from robustmq.server import BrokerServer

    local = "tcp:0:interface=127.0.0.1"
    config = parse_config({
        "node": {"data_dir": data_dir, "shutdown_grace_s": 5, "fd_reserve": reserve},
        "mqtt_runtime": {"network": {"listeners": [local]}},
        "kafka_runtime": {"network": {"listeners": [local]}},
        "amqp_runtime": {"network": {"listeners": [local]}},
        "admin": {"listeners": [local]},
        "storage": {"max_open_files": max_open_files},
    })
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    broker = BrokerServer(config, reactor=reactor, stop_reactor_on_request=True)

    def ready(_):
        ports = {p: broker.node.bound_port(p) for p in ("mqtt", "kafka", "amqp", "admin")}
        sys.stdout.write("ports {}\n".format(json.dumps(ports)))
        sys.stdout.flush()

    broker.privilegedStartService()
    broker.startService()
    broker.ready.addCallback(ready)
    reactor.addSystemEventTrigger("before", "shutdown", broker.stopService)
    reactor.run()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
