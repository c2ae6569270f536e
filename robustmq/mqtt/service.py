# -*- test-case-name: tests.test_mqtt_integration -*-
"""
The MQTT service: its listeners, the broker state they share, and a
graceful stop that keeps persistent sessions.

Stopping closes every connection (MQTT 5 clients get DISCONNECT 0x8B),
then waits for the meta store and the session journal to commit what
persistent sessions hold.
"""

from robustmq.mqtt.broker import Broker
from robustmq.mqtt.factory import MqttFactory
from robustmq.mqtt.journal import Journal
from robustmq.mqtt.store import MemoryStore, MetaSessionStore
from robustmq.network.service import ProtocolService


class MqttService(ProtocolService):
    """
    @ivar broker: the L{Broker} of every listener.
    """

    protocol_name = "mqtt"
    factory_class = MqttFactory

    def __init__(self, params):
        store = MetaSessionStore(params.meta) if params.meta is not None else MemoryStore()
        journal = None
        if params.storage is not None:
            journal = Journal(params.storage, params.reactor)
        self.broker = Broker(params, store, journal=journal)
        ProtocolService.__init__(self, params)

    def build_factory(self, endpoint):
        return self.factory_class(self.params, endpoint, self.broker)

    def flush(self):
        return self.broker.stop()
