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
    security = {}
    if "vhosts" in runtime:
        security["amqp_vhosts"] = runtime.pop("vhosts")
    data = {
        "security": security,
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

    def extra_config(self):
        """
        Other sections of the config: C{{section: {key: value}}}.
        """
        return {}

    @inlineCallbacks
    def setUp(self):
        self.data_dir = self.mktemp()
        self.broker = BrokerServer(amqp_config(self.data_dir, self.amqp, **self.extra_config()),
                                   reactor=reactor)
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


def pika_connect(port, **kwargs):
    """
    A pika BlockingConnection to the broker on C{port} (run in a thread).
    """
    import pika

    kwargs.setdefault("blocked_connection_timeout", 10)
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, **kwargs))


def pika_drain(ch, queue, count, timeout=5, ack=True):
    """
    Consume up to C{count} messages of C{queue} with pika's generator
    consumer, each awaited at most C{timeout} seconds: a list of
    (method, properties, body).
    """
    got = []
    if count:
        for method, props, body in ch.consume(queue, inactivity_timeout=timeout):
            if method is None:
                break
            got.append((method, props, body))
            if ack:
                ch.basic_ack(method.delivery_tag)
            if len(got) >= count:
                break
    ch.cancel()
    return got


def pika_get_all(ch, queue):
    """
    The bodies of every message of C{queue}, taken with basic.get (no-ack).
    """
    bodies = []
    while True:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def wait_until(predicate, conn, timeout=5.0, step=0.05):
    """
    Process the events of the pika C{conn} until C{predicate()} is true or
    C{timeout} seconds passed; the last value of C{predicate()}.
    """
    import time

    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        conn.process_data_events(step)
    return predicate()


def pump(conn, seconds):
    """
    Process the events of the pika C{conn} for C{seconds} (pika's own
    C{process_data_events(t)} returns at the first event).
    """
    wait_until(lambda: False, conn, timeout=seconds)
