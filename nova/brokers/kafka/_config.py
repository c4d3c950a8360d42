"""KafkaBroker's settings: credentials (``KafkaAuth``), TLS (``KafkaSSL``), durations, URLs."""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]

from nova._errors import ConfigurationError
from nova.brokers import _common

__all__ = ["DURATIONS", "KafkaAuth", "KafkaSSL", "bootstrap_list", "duration_option", "millis", "parse_url",
           "positive_int"]  # fmt: skip

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


# --- options --------------------------------------------------------------------------------------

_MS = timedelta(milliseconds=1)

#: KafkaBroker's durations: timedelta (numbers are seconds) under these names, and under
#: their unit-suffixed names integer milliseconds (connect_timeout_s: seconds).
#: name -> (unit-suffixed name, its unit, default)
DURATIONS: dict[str, tuple[str, timedelta, timedelta]] = {
    "session_timeout": ("session_timeout_ms", _MS, timedelta(seconds=30)),
    "heartbeat_interval": ("heartbeat_interval_ms", _MS, timedelta(seconds=1)),
    "max_poll_interval": ("max_poll_interval_ms", _MS, timedelta(minutes=5)),
    "commit_interval": ("commit_interval_ms", _MS, timedelta(milliseconds=200)),
    "request_timeout": ("request_timeout_ms", _MS, timedelta(seconds=40)),
    "connect_timeout": ("connect_timeout_s", timedelta(seconds=1), timedelta(seconds=10)),
}


def duration_option(name: str, value: timedelta | float | None, suffixed_value: float | None) -> timedelta:
    """One of ``DURATIONS``, given as ``name=`` (timedelta or seconds) or under its unit-suffixed name.

    >>> duration_option("session_timeout", None, 6000)
    datetime.timedelta(seconds=6)
    """
    suffixed, unit, default = DURATIONS[name]
    if suffixed_value is not None:
        if value is not None:
            raise ConfigurationError(f"give {name}= or {suffixed}=, not both")
        if unit == _MS:
            return timedelta(milliseconds=positive_int(suffixed, suffixed_value))
        return _common.duration(suffixed, suffixed_value)
    if value is None:
        return default
    result = _common.duration(name, value)
    if result < _MS:
        raise ConfigurationError(f"{name} must be at least 1 ms, not {value!r}")
    return result


def millis(value: timedelta) -> int:
    """A duration in whole milliseconds, as aiokafka takes them (at least 1)."""
    return max(1, round(value / _MS))


def positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, not {value!r}")
    return value


def bootstrap_list(servers: str | Sequence[str]) -> list[str]:
    """``"h1:9092,h2:9092"`` or a list of such -> ``["h1:9092", "h2:9092"]``, each checked."""
    parts = [servers] if isinstance(servers, str) else list(servers)
    result = [s.strip() for part in parts for s in part.split(",") if s.strip()]
    if not result:
        raise ConfigurationError("KafkaBroker needs at least one bootstrap server (host:port)")
    for server in result:
        _common.split_host_port(server, "bootstrap server")
    return result


_URL_INTS = ("partitions", "replication_factor", "session_timeout_ms", "max_poll_interval_ms")


def parse_url(url: str) -> tuple[list[str], dict[str, Any]]:
    """``kafka://[user:password@]host:port[,host:port]?option=value&...`` -> (bootstrap
    servers, KafkaBroker keyword arguments); see ``KafkaBroker.from_url``."""
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise ConfigurationError(f"not a kafka:// URL: {_common.redact_url(url)!r}")
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        username, _, password = userinfo.partition(":")
        username, password = unquote(username), unquote(password)
    if not netloc:
        raise ConfigurationError(f"kafka URL has no host: {_common.redact_url(url)!r}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
    kwargs: dict[str, Any] = {}
    for key in _URL_INTS:
        if key in query:
            try:
                kwargs[key] = int(query.pop(key))
            except ValueError:
                raise ConfigurationError(f"kafka URL option {key} must be an integer") from None
    for key in ("group_id", "topic_prefix"):
        if key in query:
            kwargs[key] = query.pop(key)
    if "auto_commit" in query:
        kwargs["auto_commit"] = _common.parse_bool("auto_commit", query.pop("auto_commit"), "kafka")
    protocol = query.pop("security_protocol", None)
    mechanism = query.pop("sasl_mechanism", "PLAIN")
    files = {k: query.pop(k) for k in ("ca_file", "cert_file", "key_file") if k in query}
    if query:
        raise ConfigurationError(f"unknown kafka URL option(s): {', '.join(sorted(query))}")
    if protocol is None:
        protocol = "SASL_PLAINTEXT" if username else ("SSL" if files else "PLAINTEXT")
    protocol = protocol.upper()
    if protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl"] = KafkaSSL(files.get("ca_file"), files.get("cert_file"), files.get("key_file"))
    elif files:
        raise ConfigurationError("ca_file/cert_file/key_file need security_protocol SSL or SASL_SSL")
    if protocol.startswith("SASL_"):
        if not username:
            raise ConfigurationError(f"security_protocol {protocol} needs user:password@ in the URL")
        kwargs["auth"] = KafkaAuth(protocol, mechanism.upper(), username, password or "")  # type: ignore[arg-type]
    elif protocol not in ("PLAINTEXT", "SSL"):
        raise ConfigurationError(
            f"security_protocol {protocol!r} is invalid: use PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
        )
    elif username:
        raise ConfigurationError("credentials in the URL need security_protocol SASL_PLAINTEXT or SASL_SSL")
    return netloc.split(","), kwargs
