from twisted.application.service import ServiceMaker

robustmq = ServiceMaker(
    "robustmq",
    "robustmq.tap",
    "All-in-one message broker: MQTT, Kafka wire protocol and AMQP 0-9-1.",
    "robustmq",
)
