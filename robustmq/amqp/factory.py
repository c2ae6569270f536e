# -*- test-case-name: tests.test_amqp_protocol -*-
"""
The factory of AMQP connections: knows the Params, the shared
L{robustmq.amqp.broker.Broker} and how users log in.
"""

import ipaddress

from twisted.internet.defer import succeed

from robustmq.amqp.permissions import Permissions
from robustmq.amqp.protocol import AmqpProtocol
from robustmq.network.protocol import BrokerFactory

_LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def is_loopback(host):
    """
    Whether C{host} is 127.0.0.1 or ::1 (IPv4-mapped too); other addresses
    of 127.0.0.0/8 are not, so that a local proxy or container network
    does not make remote clients look local.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address) in _LOOPBACK


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
        self.permissions = Permissions.from_security(params.security)

    def check_login(self, user, password, peer_host):
        """
        A Deferred firing with whether C{user} may log in from C{peer_host}
        with C{password} (bytes): the default user of C{[security]} (while
        anonymous clients are allowed), or a user of the shared
        authenticator; a user of C{amqp_loopback_users} only from 127.0.0.1
        or ::1.
        """
        security = self.params.security
        default_user = security.amqp_default_user
        default_password = security.amqp_default_password
        loopback_users = security.amqp_loopback_users
        if user in loopback_users and not is_loopback(peer_host):
            return succeed(False)
        if default_user and user == default_user and security.allow_anonymous:
            return succeed(password == default_password.encode("utf-8"))
        authenticator = self.params.authenticator
        return authenticator.authenticate(user, password, peer_host)

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
