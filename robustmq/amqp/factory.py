# -*- test-case-name: tests.test_amqp_protocol -*-
"""
The factory of AMQP connections: knows the Params, the shared
L{robustmq.amqp.broker.Broker} and how users log in.
"""

import ipaddress

from robustmq.amqp.protocol import AmqpProtocol
from robustmq.network.protocol import BrokerFactory


def is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "")


class AmqpFactory(BrokerFactory):
    """
    @ivar broker: the L{robustmq.amqp.broker.Broker} of every listener.
    @ivar open_connections: the connections past connection.open.
    """

    protocol = AmqpProtocol
    protocol_name = "amqp"

    def __init__(self, params, listener, broker, watcher=None):
        BrokerFactory.__init__(self, params, listener)
        self.broker = broker
        self.watcher = watcher

    def check_login(self, user, password, peer_host):
        """
        Whether C{user} may log in from C{peer_host} with C{password}
        (bytes): the default user of C{[security]} (loopback only when
        listed in C{amqp_loopback_users}), or a user of the shared
        authenticator.
        """
        security = self.params.security
        default_user = security.amqp_default_user
        default_password = security.amqp_default_password
        loopback_users = security.amqp_loopback_users
        if user in loopback_users and not is_loopback(peer_host):
            return False
        if default_user and user == default_user:
            return password == default_password.encode("utf-8")
        authenticator = self.params.authenticator
        return bool(authenticator.authenticate(user, password, peer_host))

    def connection_made(self, conn):
        pass

    def connection_opened(self, conn):
        if self.watcher is not None:
            self.watcher.connection_opened(conn)

    def publisher_started(self, conn):
        if self.watcher is not None:
            self.watcher.publisher_started(conn)

    def connection_lost(self, conn):
        if self.watcher is not None:
            self.watcher.connection_lost(conn)
