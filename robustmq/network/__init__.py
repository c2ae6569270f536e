"""
The network layer: listeners from endpoint strings, the base framed protocol and
the WebSocket/TLS transports that every protocol gets for free.
"""
