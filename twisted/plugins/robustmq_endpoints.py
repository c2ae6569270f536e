# -*- test-case-name: tests.test_transports -*-
"""
Endpoint-string parsers for the transports of robustmq, so that any Twisted
program can use them with C{serverFromString}: C{ws:}, C{wss:} and C{mtls:}
(TLS with client-certificate verification).
"""

from robustmq.network.tls import TLSServerParser
from robustmq.network.websocket import (
    SecureWebSocketServerParser,
    WebSocketServerParser,
)

ws_endpoint_parser = WebSocketServerParser()
wss_endpoint_parser = SecureWebSocketServerParser()
mtls_endpoint_parser = TLSServerParser()
