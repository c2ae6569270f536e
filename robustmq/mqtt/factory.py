# -*- test-case-name: tests.test_mqtt_protocol -*-
"""
The factory of MQTT connections of one listener: all listeners of the
service share one L{robustmq.mqtt.broker.Broker}.
"""

from robustmq.mqtt.protocol import MqttProtocol
from robustmq.network.protocol import BrokerFactory


class MqttFactory(BrokerFactory):
    """
    @ivar broker: the shared L{robustmq.mqtt.broker.Broker}.
    @ivar protocol_config: the C{[mqtt_runtime.protocol]} section.
    """

    protocol = MqttProtocol
    protocol_name = "mqtt"
    websocket_subprotocols = ("mqtt", "mqttv3.1")
    websocket_default_path = "/mqtt"

    def __init__(self, params, listener, broker):
        BrokerFactory.__init__(self, params, listener)
        self.broker = broker
        self.protocol_config = params.config.protocol
