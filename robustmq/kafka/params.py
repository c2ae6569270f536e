# -*- test-case-name: tests.test_server -*-
"""
What the Kafka service is given by L{robustmq.server.BrokerServer}: the only
way it reaches shared objects.
"""

from attrs import frozen


@frozen
class KafkaParams:
    reactor: object
    config: object  # robustmq.config.KafkaRuntimeConfig
    shutdown_grace_s: float
    connections: object
    rate_limiter: object
    node: object
    metrics: object
    authenticator: object
    storage: object
    offsets: object
    meta: object
    shutdown: object
    #: The shared L{robustmq.security.Authorizer} (its Kafka rules and
    #: C{acl_default}); L{None}: no Kafka rules, everything allowed.
    authorizer: object = None
