"""Kafka adapter (aiokafka): ``nova.KafkaBroker``, ``nova.KafkaAuth``, ``nova.KafkaSSL``."""

from nova._kafka import KafkaAuth, KafkaBroker, KafkaSSL

__all__ = ["KafkaAuth", "KafkaBroker", "KafkaSSL"]
