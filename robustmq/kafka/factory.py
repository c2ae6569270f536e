# -*- test-case-name: tests.test_kafka_protocol -*-
"""
The factory of Kafka connections: one per listener, all sharing the
service's L{robustmq.kafka.broker.KafkaBroker}.
"""

from robustmq.kafka.protocol import KafkaProtocol
from robustmq.network.protocol import BrokerFactory


class KafkaFactory(BrokerFactory):
    """
    Builds L{KafkaProtocol}s.

    @ivar broker: the state shared by every Kafka connection.
    """

    protocol = KafkaProtocol
    protocol_name = "kafka"

    def __init__(self, params, listener, broker):
        BrokerFactory.__init__(self, params, listener)
        self.broker = broker
