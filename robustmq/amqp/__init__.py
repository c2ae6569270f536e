"""AMQP 0-9-1: the codec, protocol, broker and service of the AMQP listener."""
