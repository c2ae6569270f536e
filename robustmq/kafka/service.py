# -*- test-case-name: tests.test_server -*-
"""
The Kafka service: its listeners and its graceful stop.

Until the protocol lands, its listeners register each connection and close it.
"""

from robustmq.network.placeholder import placeholder_factory
from robustmq.network.service import ProtocolService


class KafkaFactory(placeholder_factory("kafka")):
    pass


class KafkaService(ProtocolService):
    protocol_name = "kafka"
    factory_class = KafkaFactory
