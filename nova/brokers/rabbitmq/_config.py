"""The nodes a RabbitMQBroker may connect to, read from one URL or several, and its queue type.

One URL may list several hosts (``amqp://u:p@h1:5672,h2:5672/``), or several URLs
may be given; either way they name the nodes of one cluster, so they share scheme,
credentials, vhost and query and differ only in host and port:

>>> nodes = parse_nodes(["amqp://u:p@h1/?heartbeat=30", "amqp://u:p@h2:5682/"], auth=None, tls=None)
>>> nodes.urls
('amqp://u:p@h1:5672/?heartbeat=30', 'amqp://u:p@h2:5682/?heartbeat=30')
>>> nodes.display
'amqp://u:***@h1:5672,h2:5682/'
>>> parse_nodes("amqp://u:p@h1,[::1]:5682/vh?queue_type=quorum", auth=None, tls=None).urls
('amqp://u:p@h1:5672/vh', 'amqp://u:p@[::1]:5682/vh')
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from nova._errors import ConfigurationError
from nova.brokers._common import redact_url

__all__ = ["NOVA_OPTIONS", "QUEUE_TYPES", "Nodes", "parse_nodes", "queue_type", "url_option"]

#: Query options nova reads itself (the constructor, and so from_url); they never reach aio-pika.
NOVA_OPTIONS = ("exchange", "topic_prefix", "group_id", "queue_type")
QUEUE_TYPES = ("classic", "quorum")


@dataclass(frozen=True)
class Nodes:
    """Where to connect: one aio-pika URL per node (credentials escaped), in the given order."""

    urls: tuple[str, ...]
    #: every host in one URL, the password replaced by ``***``
    display: str
    user: str
    password: str = field(repr=False)
    tls: ssl.SSLContext | None
    #: nova's own options found in the query (``NOVA_OPTIONS``)
    options: dict[str, str]

    def node(self, url: str) -> str:
        """``host:port`` of one of ``urls``."""
        return url.split("@", 1)[1].split("/", 1)[0]


def parse_nodes(url: str | Sequence[str], *, auth: tuple[str, str] | None, tls: ssl.SSLContext | None) -> Nodes:
    """Check and normalise the URL(s) a RabbitMQBroker was given."""
    given = [url] if isinstance(url, str) else list(url) if isinstance(url, Sequence) else None
    if not given or not all(isinstance(u, str) for u in given):
        raise ConfigurationError(
            "url must be an amqp:// URL or a list of them, e.g. 'amqp://user:pass@127.0.0.1:5672/' "
            "or ['amqp://user:pass@10.0.0.1:5672/', 'amqp://user:pass@10.0.0.2:5672/']"
        )
    parsed = [_split(u) for u in given]
    scheme, userinfo, path, _, _ = parsed[0]
    queries = {p[3] for p in parsed if p[3]}  # a URL without options takes the others'
    if len(queries) > 1 or any(p[:3] != (scheme, userinfo, path) for p in parsed):
        raise ConfigurationError(
            "the URLs of one RabbitMQBroker name the nodes of one cluster: they must share scheme, "
            "user, password, vhost and options, and differ only in host and port"
        )
    query = next(iter(queries), "")
    if auth is not None:
        if not (isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(a, str) for a in auth)):
            raise ConfigurationError("auth must be a (user, password) tuple of str")
        user, password = auth
    else:
        name, has_password, secret = userinfo.partition(":")
        user = unquote(name) if userinfo else "guest"
        password = unquote(secret) if has_password else "guest"
    if tls is not None and not isinstance(tls, ssl.SSLContext):
        raise ConfigurationError("tls must be an ssl.SSLContext, e.g. ssl.create_default_context(cafile=...)")
    if tls is not None:
        scheme = "amqps"
    default_port = 5671 if scheme == "amqps" else 5672
    hosts = list(dict.fromkeys(f"{host}:{port or default_port}" for *_, addresses in parsed
                               for host, port in addresses))
    pairs = parse_qsl(query)
    options = {k: v for k, v in pairs if k in NOVA_OPTIONS}
    client_query = urlencode([(k, v) for k, v in pairs if k not in NOVA_OPTIONS])
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    path = path or "/"
    urls = tuple(urlunsplit((scheme, f"{credentials}@{host}", path, client_query, "")) for host in hosts)
    display = redact_url(urlunsplit((scheme, f"{credentials}@{','.join(hosts)}", path, "", "")))
    if tls is None and scheme == "amqps":
        tls = ssl.create_default_context()
    return Nodes(urls, display, user, password, tls, options)


def url_option(name: str, given: str | None, options: dict[str, str]) -> str | None:
    """One of ``NOVA_OPTIONS``: the keyword, else the URL's query parameter, else None.
    Both, and different, is an error rather than a silent pick.

    >>> url_option("exchange", None, {"exchange": "shop"})
    'shop'
    """
    in_url = options.get(name)
    if given is not None and in_url is not None and given != in_url:
        raise ConfigurationError(f"{name}={given!r} contradicts the URL's {name}={in_url}: give it once")
    return given if given is not None else in_url


def queue_type(given: str | None, options: dict[str, str]) -> str:
    """The queue type: the keyword, else the URL's ``queue_type``, else ``"classic"``."""
    chosen = url_option("queue_type", given, options) or "classic"
    if chosen not in QUEUE_TYPES:
        raise ConfigurationError(
            f"queue_type must be 'classic' (the default) or 'quorum' (replicated, for clusters), got {chosen!r}"
        )
    return chosen


def _split(url: str) -> tuple[str, str, str, str, list[tuple[str, int | None]]]:
    """``(scheme, userinfo, path, query, [(host, port or None), ...])`` of one URL."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unbalanced [ or ] (IPv6 literal)
        raise ConfigurationError(
            f"RabbitMQ URL has an invalid IPv6 host ({exc}), e.g. amqp://[::1]:5672/"
        ) from exc
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigurationError(
            f"RabbitMQ URL must start with amqp:// or amqps://, got {parts.scheme or 'no'} scheme"
        )
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    addresses = [_address(a) for a in hostlist.split(",")]
    return parts.scheme, userinfo, parts.path, parts.query, addresses


def _address(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> ``(host as written in a URL, port)``."""
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            raise ConfigurationError(f"RabbitMQ URL has an invalid IPv6 host {text!r}, e.g. amqp://[::1]:5672/")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_or_none = text.partition(":")
        port_text = port_text_or_none if sep else None
    if host in ("", "[]"):
        raise ConfigurationError(
            "RabbitMQ URL has no host, e.g. amqp://user:pass@127.0.0.1:5672/ "
            "(several nodes: amqp://user:pass@10.0.0.1:5672,10.0.0.2:5672/)"
        )
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(
            f"RabbitMQ URL has an invalid port {port_text!r}: use a number from 1 to 65535, "
            "e.g. amqp://127.0.0.1:5672/"
        )
    return host, int(port_text)
