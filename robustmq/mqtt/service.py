# -*- test-case-name: tests.test_server -*-
"""
The MQTT service: its listeners and its graceful stop.

Until the protocol lands, its listeners register each connection and close it.
"""

from robustmq.network.placeholder import placeholder_factory
from robustmq.network.service import ProtocolService


class MqttFactory(placeholder_factory("mqtt")):
    websocket_subprotocols = ("mqtt", "mqttv3.1")
    websocket_default_path = "/mqtt"


class MqttService(ProtocolService):
    protocol_name = "mqtt"
    factory_class = MqttFactory
