"""The Apache Kafka wire protocol: generated schema table, codec and error codes."""
