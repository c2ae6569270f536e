# -*- test-case-name: tests.test_server -*-
"""
What a protocol serves before its implementation exists: every connection is
registered, logged and closed at once.
"""

from robustmq.network.protocol import BrokerFactory, FramedProtocol


class ClosingProtocol(FramedProtocol):
    def connectionMade(self):
        FramedProtocol.connectionMade(self)
        self.log.info(
            "{protocol} {peer}: protocol not served yet, closing",
            protocol=self.factory.protocol_name, peer=self.peer,
        )
        self.close_gracefully()

    def frame_length(self, buf, offset):
        return None


def placeholder_factory(name):
    """
    A L{BrokerFactory} subclass for protocol C{name} serving L{ClosingProtocol}.
    """
    return type(name.capitalize() + "PlaceholderFactory", (BrokerFactory,),
                {"protocol": ClosingProtocol, "protocol_name": name})
