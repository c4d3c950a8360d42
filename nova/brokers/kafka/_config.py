"""KafkaBroker's settings: credentials (``KafkaAuth``), TLS (``KafkaSSL``) and option checks."""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]

from nova._errors import ConfigurationError

__all__ = ["KafkaAuth", "KafkaSSL"]

log = logging.getLogger("nova.kafka")

SecurityProtocol = Literal["SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class KafkaAuth:
    """SASL credentials. The password never appears in ``repr`` or error messages.

    >>> KafkaAuth("SASL_SSL", "SCRAM-SHA-256", "alice", "s3cret")
    KafkaAuth(security_protocol='SASL_SSL', mechanism='SCRAM-SHA-256', username='alice')
    """

    security_protocol: SecurityProtocol
    mechanism: SaslMechanism
    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if self.security_protocol not in _PROTOCOLS:
            raise ConfigurationError(
                f"KafkaAuth security_protocol {self.security_protocol!r} is invalid: use one of {', '.join(_PROTOCOLS)}"
            )
        if self.mechanism not in _MECHANISMS:
            raise ConfigurationError(
                f"KafkaAuth mechanism {self.mechanism!r} is invalid: use one of {', '.join(_MECHANISMS)}"
            )
        if not self.username:
            raise ConfigurationError("KafkaAuth username is empty")


@dataclass(frozen=True, slots=True)
class KafkaSSL:
    """TLS settings: the CA that signs the brokers' certificates, and optionally a
    client certificate for mutual TLS (``password`` unlocks an encrypted key).

    >>> KafkaSSL(ca_file="/etc/kafka/ca.pem")
    KafkaSSL(ca_file='/etc/kafka/ca.pem', cert_file=None, key_file=None, check_hostname=True)
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    password: str | None = field(default=None, repr=False)
    check_hostname: bool = True

    def context(self) -> _ssl.SSLContext:
        """An ``ssl.SSLContext`` for these settings (system CAs when ``ca_file`` is None)."""
        if self.key_file is not None and self.cert_file is None:
            raise ConfigurationError("KafkaSSL key_file needs cert_file")
        try:
            ctx: _ssl.SSLContext = create_ssl_context(
                cafile=self.ca_file,
                certfile=self.cert_file,
                keyfile=self.key_file,
                password=self.password,
            )
        except (OSError, _ssl.SSLError) as exc:
            # Name the files, never the password.
            raise ConfigurationError(
                f"cannot load TLS files (ca_file={self.ca_file!r}, cert_file={self.cert_file!r}, "
                f"key_file={self.key_file!r}): {exc}"
            ) from exc
        ctx.check_hostname = self.check_hostname
        return ctx


# --- helpers ------------------------------------------------------------------------------------


def _split_host_port(server: str) -> tuple[str, int]:
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigurationError(f"bootstrap server {server!r} is not host:port")
    return host.strip("[]"), int(port)


def _delay_slots(value: tuple[int, timedelta | float] | None) -> tuple[int, timedelta] | None:
    if value is None:
        return None
    try:
        count, duration = value
    except (TypeError, ValueError):
        raise ConfigurationError(f"delay_slots must be (count, duration), not {value!r}") from None
    if not isinstance(duration, timedelta):
        duration = timedelta(seconds=duration)
    if not isinstance(count, int) or count < 1 or duration <= timedelta(0):
        raise ConfigurationError(f"delay_slots must be (count >= 1, duration > 0), not {value!r}")
    return count, duration


def _parse_bool(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"kafka URL option {name} must be true or false, not {value!r}")


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    return parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}").geturl()


async def _quietly(awaitable: Any) -> None:
    """Best-effort cleanup: a failure to stop must not hide the error being raised."""
    try:
        await asyncio.wait_for(awaitable, 15)
    except Exception as exc:  # noqa: BLE001
        log.debug("kafka cleanup failed: %r", exc)
