"""KafkaBroker's settings: credentials (``KafkaAuth``), TLS (``KafkaSSL``) and option checks."""

from __future__ import annotations

import ssl as _ssl
from dataclasses import dataclass, field
from typing import Literal

from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]

from nova._errors import ConfigurationError

__all__ = ["KafkaAuth", "KafkaSSL"]

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

