# -*- test-case-name: tests.test_amqp_permissions -*-
"""
AMQP permissions as RabbitMQ has them: per user and virtual host, three
regular expressions on queue and exchange names, C{configure} (declare,
delete), C{write} (publish to an exchange, bind to a queue or exchange)
and C{read} (consume, get, purge a queue, bind from an exchange). An empty
expression matches nothing; the default exchange is named C{amq.default}.

Without any C{[[security.amqp_permissions]]} entry every user may do
everything in every virtual host (L{Permissions.grant} returns L{None},
so nothing is checked).
"""

import re

from robustmq.amqp import codec

#: The name RabbitMQ checks for the default exchange.
DEFAULT_EXCHANGE = "amq.default"

_EVERYTHING = ".*"


class Grant:
    """
    What one user may do in one virtual host. Decisions are cached by
    name, so a publish costs a dict lookup.
    """

    __slots__ = ("user", "vhost", "patterns", "cache")

    def __init__(self, user, vhost, configure, write, read):
        self.user = user
        self.vhost = vhost
        self.patterns = {
            what: re.compile(pattern) if pattern else None
            for what, pattern in (("configure", configure), ("write", write), ("read", read))
        }
        self.cache = {}

    def check(self, what, kind, name):
        """
        @param what: C{"configure"}, C{"write"} or C{"read"}.
        @param kind: C{"queue"} or C{"exchange"}.
        @raise codec.AccessRefused: C{what} is not permitted on C{name}.
        """
        if kind == "exchange" and not name:
            name = DEFAULT_EXCHANGE
        key = (what, kind, name)
        allowed = self.cache.get(key)
        if allowed is None:
            pattern = self.patterns[what]
            allowed = pattern is not None and pattern.search(name) is not None
            if len(self.cache) < 4096:
                self.cache[key] = allowed
        if not allowed:
            raise codec.AccessRefused("access to %s '%s' in vhost '%s' refused for user '%s'"
                                      % (kind, name, self.vhost, self.user))


class Permissions:
    """
    The C{amqp_permissions} of C{[security]}.

    @ivar open: no entry: everything is permitted to every user.
    """

    def __init__(self, entries=(), default_user=""):
        self.open = not entries
        self.table = {}
        for entry in entries:
            self.table[(entry.user, entry.vhost)] = (entry.configure, entry.write, entry.read)
        if entries and default_user and not any(e.user == default_user for e in entries):
            # As RabbitMQ's default user: everything in the default vhost.
            self.table[(default_user, "/")] = (_EVERYTHING,) * 3

    @classmethod
    def from_security(cls, security):
        return cls(security.amqp_permissions, security.amqp_default_user)

    def grant(self, user, vhost):
        """
        The L{Grant} of C{user} in C{vhost}, or L{None} when nothing is
        checked.

        @raise codec.NotAllowed: C{user} has no permission in C{vhost}.
        """
        if self.open:
            return None
        patterns = self.table.get((user, vhost))
        if patterns is None:
            raise codec.NotAllowed("access to vhost '%s' refused for user '%s'" % (vhost, user))
        return Grant(user, vhost, *patterns)
