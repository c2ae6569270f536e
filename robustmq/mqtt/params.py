# -*- test-case-name: tests.test_server -*-
"""
What the MQTT service is given by L{robustmq.server.BrokerServer}: the only
way it reaches shared objects.
"""

from attrs import frozen


@frozen
class MqttParams:
    reactor: object
    config: object  # robustmq.config.MqttRuntimeConfig
    shutdown_grace_s: float
    connections: object
    rate_limiter: object
    node: object
    metrics: object
    authenticator: object
    authorizer: object
    storage: object
    meta: object
    shutdown: object
