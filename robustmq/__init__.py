"""
robustmq: one Twisted process speaking MQTT, the Kafka wire protocol and AMQP 0-9-1.
"""

__version__ = "0.1.0"
