from setuptools import find_packages, setup

setup(
    name="robustmq",
    version="0.1.0",
    description="All-in-one message broker: MQTT, Kafka wire protocol and AMQP 0-9-1 on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/robustmq_plugin.py", "plugins/robustmq_endpoints.py"]},
    include_package_data=True,
    install_requires=[
        "twisted>=24.3.0",
        "autobahn>=24.4.2",
        "pyopenssl>=24.0.0",
        "service-identity>=24.1.0",
        "zope.interface>=6.0",
        "attrs>=23.1.0",
        "prometheus-client>=0.20.0",
        "crc32c>=2.4",
        "cramjam>=2.7",
    ],
    extras_require={
        "test": [
            "hypothesis>=6.100",
            "cryptography>=42",
            "kafka-python>=2.0",
            "pika>=1.3",
            "paho-mqtt>=2.0",
            "kombu>=5.3",
            "aio-pika>=9.0",
            "confluent-kafka>=2.3",
            "aiokafka>=0.10",
        ],
    },
    zip_safe=False,
)
