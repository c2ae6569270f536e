# -*- test-case-name: tests.test_server -*-
"""
What the AMQP 0-9-1 service is given by L{robustmq.server.BrokerServer}: the only
way it reaches shared objects.
"""

from attrs import frozen


@frozen
class AmqpParams:
    reactor: object
    config: object  # robustmq.config.AmqpRuntimeConfig
    security: object  # robustmq.config.SecurityConfig: users and vhosts
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
