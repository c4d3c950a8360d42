"""Kafka adapter (aiokafka): ``nova.KafkaBroker``, ``nova.KafkaAuth``, ``nova.KafkaSSL``."""

from nova.brokers.kafka._broker import KafkaAuth, KafkaBroker, KafkaSSL

__all__ = ["KafkaAuth", "KafkaBroker", "KafkaSSL"]
