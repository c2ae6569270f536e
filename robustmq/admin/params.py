# -*- test-case-name: tests.test_server -*-
"""
What the admin HTTP service is given by L{robustmq.server.BrokerServer}: the only
way it reaches shared objects.
"""

from attrs import frozen


@frozen
class AdminParams:
    reactor: object
    config: object  # robustmq.config.AdminConfig
    connections: object
    node: object
    metrics: object
    shutdown: object
    status: object  # callable returning "starting" | "ok" | "stopping"
    authenticator: object = None
    security: object = None  # robustmq.config.SecurityConfig
