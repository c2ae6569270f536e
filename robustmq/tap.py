# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd robustmq} command: options, config validation and the service.
"""

import sys

from twisted.python import usage

from robustmq.config import ConfigError, load_config
from robustmq.logs import observer_factory
from robustmq.network.service import ListenError
from robustmq.server import BrokerServer


class Options(usage.Options):
    """
    C{twistd robustmq [--config FILE]}. The whole config is validated here,
    before anything is built or bound; problems go to stderr, one per line,
    and the process exits with status 2.
    """

    synopsis = "[--config FILE]"
    longdesc = (
        "Run the robustmq broker (MQTT, Kafka wire protocol, AMQP 0-9-1). "
        "Without --config the embedded defaults are used."
    )
    optParameters = [
        ["config", "c", None, "Path of the TOML config file (default: embedded defaults)."],
    ]

    def postOptions(self):
        try:
            self.broker_config = load_config(self["config"])
        except ConfigError as e:
            for line in e.problems:
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
            raise SystemExit(2)
        parent = getattr(self, "parent", None)
        if parent is not None and not parent.get("logger"):
            parent["logger"] = observer_factory(self.broker_config.log, parent)


class TwistdBrokerServer(BrokerServer):
    """
    The broker as twistd runs it: a listener that cannot be bound stops the
    process with a clear message and status 1, and a shutdown request stops
    the reactor.
    """

    def privilegedStartService(self):
        try:
            BrokerServer.privilegedStartService(self)
        except ListenError as e:
            for line in e.problems:
                sys.stderr.write("error: " + line + "\n")
            sys.stderr.flush()
            raise SystemExit(1)


def makeService(options):
    from twisted.internet import reactor

    return TwistdBrokerServer(options.broker_config, reactor=reactor, stop_reactor_on_request=True)
