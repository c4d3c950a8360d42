"""Kafka adapter (aiokafka): ``nova.KafkaBroker``, ``nova.KafkaAuth``, ``nova.KafkaSSL``."""

try:
    import aiokafka  # type: ignore[import-untyped]  # noqa: F401
    import orjson  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("nova.KafkaBroker needs aiokafka and orjson: pip install 'nova-taskqueue[kafka]'") from exc

from nova.brokers.kafka._broker import KafkaBroker
from nova.brokers.kafka._config import KafkaAuth, KafkaSSL

__all__ = ["KafkaAuth", "KafkaBroker", "KafkaSSL"]
