# -*- test-case-name: tests.test_server -*-
"""
The AMQP 0-9-1 service: its listeners and its graceful stop.

Until the protocol lands, its listeners register each connection and close it.
"""

from robustmq.network.placeholder import placeholder_factory
from robustmq.network.service import ProtocolService


class AmqpFactory(placeholder_factory("amqp")):
    pass


class AmqpService(ProtocolService):
    protocol_name = "amqp"
    factory_class = AmqpFactory
