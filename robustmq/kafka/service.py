# -*- test-case-name: tests.test_kafka_protocol -*-
"""
The Kafka service: its listeners, the broker state they share, and a
graceful stop that answers the requests in flight and saves the
idempotent-producer state.
"""

from robustmq.kafka.broker import KafkaBroker
from robustmq.kafka.factory import KafkaFactory
from robustmq.kafka.groups import GroupCoordinator
from robustmq.network.service import ProtocolService


class KafkaService(ProtocolService):
    """
    @ivar broker: the L{KafkaBroker} of every listener.
    """

    protocol_name = "kafka"
    factory_class = KafkaFactory

    def __init__(self, params):
        self.broker = KafkaBroker(params)
        self.broker.groups = GroupCoordinator(self.broker)
        ProtocolService.__init__(self, params)

    def build_factory(self, endpoint):
        return self.factory_class(self.params, endpoint, self.broker)

    def flush(self):
        return self.broker.flush()
