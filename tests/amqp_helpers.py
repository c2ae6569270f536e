"""
Helpers of the AMQP tests: a real broker on 127.0.0.1 port 0, and client
code run in a thread next to the reactor.
"""

from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from robustmq.config import parse_config
from robustmq.server import BrokerServer

LOCAL = "tcp:0:interface=127.0.0.1"


def amqp_config(data_dir, amqp=None, **extra):
    """
    A config with only an AMQP listener on 127.0.0.1 port 0.
    """
    runtime = {"network": {"listeners": [LOCAL]}}
    runtime.update(amqp or {})
    data = {
        "node": {"data_dir": data_dir, "shutdown_grace_s": 5},
        "mqtt_runtime": {"network": {"listeners": []}},
        "kafka_runtime": {"network": {"listeners": []}},
        "amqp_runtime": runtime,
        "admin": {"listeners": []},
    }
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data)


class BrokerCase(TestCase):
    """
    Starts a broker before each test; C{self.port} is its AMQP port.
    """

    timeout = 60
    amqp = None

    @inlineCallbacks
    def setUp(self):
        self.data_dir = self.mktemp()
        self.broker = BrokerServer(amqp_config(self.data_dir, self.amqp), reactor=reactor)
        self.broker.privilegedStartService()
        self.broker.startService()
        self.addCleanup(self._stop)
        yield self.broker.ready
        self.port = self.broker.node.bound_port("amqp")

    def _stop(self):
        if self.broker.running:
            return self.broker.stopService()

    def in_thread(self, f, *args, **kwargs):
        """
        Run blocking client code in a thread; a Deferred of its result.
        """
        return threads.deferToThread(f, *args, **kwargs)

    @property
    def amqp_service(self):
        for service in self.broker.protocols:
            if service.protocol_name == "amqp":
                return service
        raise LookupError("amqp")

    def url(self):
        return "amqp://guest:guest@127.0.0.1:%d/%%2F" % (self.port,)
