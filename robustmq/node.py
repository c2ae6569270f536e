# -*- test-case-name: tests.test_shared -*-
"""
What every protocol may read about this node: its id, version, start time and
the state and bound address of every listener.
"""

from zope.interface import implementer

from robustmq import __version__
from robustmq.interfaces import INodeCache


@implementer(INodeCache)
class NodeCache:
    def __init__(self, node_id, started_at, version=__version__):
        self.node_id = node_id
        self.started_at = started_at
        self.version = version
        self._listeners = {}

    def set_listener(self, protocol_name, endpoint, address, state):
        self._listeners[(protocol_name, endpoint)] = {
            "protocol": protocol_name,
            "endpoint": endpoint,
            "address": address,
            "state": state,
        }

    def listeners(self, protocol_name=None):
        return [
            dict(v)
            for (proto, _), v in self._listeners.items()
            if protocol_name is None or proto == protocol_name
        ]

    def bound_port(self, protocol_name, index=0):
        entries = [v for (proto, _), v in self._listeners.items() if proto == protocol_name]
        if index >= len(entries):
            return None
        address = entries[index]["address"]
        if not address or ":" not in address:
            return None
        try:
            return int(address.rsplit(":", 1)[1])
        except ValueError:
            return None
