"""The packed header: all of a message's headers as one Kafka header, ``nova``.

Its value is a JSON object of strings. nova's own header names are shortened to one
letter (``_PACKED_NAMES``); any other name is kept as it is, unless it is one of those
letters or begins with "=": then it gets one more "=" in front. nova writes the id
first, ``{"i":"<id>",<rest>``, so the tasks of one ``enqueue_batch``, which differ only
in the id, are packed (``_Packer``) and parsed (``_PackedHeaders``) once per run.

    >>> _headers(Message("t", b"", {"nova-id": "a1", "nova-type": "email", "trace": "x"}))
    [('nova', b'{"i":"a1","t":"email","trace":"x"}')]

Records with the full names (``{"nova-id": ...}``) decode too, and so do records with
ordinary Kafka headers, one per name (another producer's), their values as UTF-8 text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from nova._broker import Message
from nova._envelope import H

_PACKED = "nova"  # the Kafka header that carries all of a message's headers
# How the packed header names nova's headers. Any other name is written as it is, unless it
# is one of these letters or begins with "=": then with one more "=" in front.
_PACKED_NAMES = {H.ID: "i", H.TYPE: "t", H.QUEUE: "q", H.PRIORITY: "p", H.ATTEMPT: "a", H.CONTENT_TYPE: "c",
                 H.ENQUEUED_AT: "e", H.ETA: "d", H.TARGET: "g", H.HOLD_UNTIL: "h", H.HEADERS: "u", H.ERROR: "x"}
_FULL_NAMES = {short: full for full, short in _PACKED_NAMES.items()}


def _packed_name(name: str) -> str:
    short = _PACKED_NAMES.get(name)
    if short is not None:
        return short
    return "=" + name if name in _FULL_NAMES or name.startswith("=") else name


def _full_name(name: str) -> str:
    if name.startswith("="):
        return name[1:]
    return _FULL_NAMES.get(name, name)


_ID = H.ID
_ID_FIRST = b'{"i":"'  # how nova's packed header begins: the id comes first (see _envelope.task_headers)
_ID_AT = len(_ID_FIRST)
_ID_KEYS = (b'"i"', b'"nova-id"')  # an id's key, short or full, anywhere after the first


def _pack(headers: Mapping[str, str]) -> bytes:
    return orjson.dumps({_packed_name(name): value for name, value in headers.items()})


def _headers(message: Message) -> list[tuple[str, bytes]]:
    """A message's headers as Kafka headers: one, ``nova``, packed."""
    return [(_PACKED, _pack(message.headers))] if message.headers else []


class _Packer:
    """``_headers``, packing once per run of messages that differ only in the id (the
    tasks of one ``enqueue_batch``): such a message's packed header is the previous
    one's with its own id. One per broker."""

    __slots__ = ("_probe", "_rest")

    def __init__(self) -> None:
        self._probe: dict[str, str] | None = None  # the headers the rest was packed from
        self._rest = b""  # their packed header after the id: '",<the others>}'

    def headers(self, message: Message) -> list[tuple[str, bytes]]:
        headers = message.headers
        if not headers:
            return []
        task_id = headers.get(_ID)
        if task_id is None or not (task_id.isascii() and task_id.isalnum()):  # not written as it is
            return [(_PACKED, _pack(headers))]
        probe = self._probe
        if probe is not None:
            probe[_ID] = task_id
            if headers == probe:
                return [(_PACKED, b"".join((_ID_FIRST, task_id.encode(), self._rest)))]
        packed = _pack(headers)
        end = _ID_AT + len(task_id)
        if packed.startswith(_ID_FIRST) and packed[end : end + 1] == b'"':  # the id came first
            self._probe, self._rest = dict(headers), packed[end:]
        return [(_PACKED, packed)]


def _decode_headers(raw: Any) -> dict[str, str]:
    """A record's headers as text: nova's packed header, or Kafka headers one by one (bytes
    that are not UTF-8 are replaced, not fatal)."""
    if not raw:
        return {}
    if raw[0][0] == _PACKED:
        packed = _unpack(raw[0][1])
        if packed is not None:
            return packed if len(raw) == 1 else {**_decode_plain(raw[1:]), **packed}
    return _decode_plain(raw)


def _unpack(value: bytes | None) -> dict[str, str] | None:
    """The packed header's JSON object of strings, with nova's full header names; None if
    it is not one."""
    try:
        packed = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if type(packed) is not dict:
        return None
    try:
        "".join(packed.values())  # every value a string (the keys of a JSON object are)
    except TypeError:
        return None
    strings: dict[str, str] = packed
    return {_full_name(name): value for name, value in strings.items()}


class _PackedHeaders:
    """Decodes packed headers, parsing once per run of records that differ only in the id.

    The tasks of one ``enqueue_batch`` share every header but their id, which nova
    writes first: ``{"i":"<id>",<rest>``. When a record's ``<rest>`` is the
    previous one's and its id is plain (letters and digits, as nova's own ids),
    its headers are that parse with the new id; anything else is parsed. One per
    subscription.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        # The current run: (its <rest> from the id's closing quote on, its parse, where the
        # id of its last record ended)
        self._last: tuple[bytes, dict[str, str], int] | None = None

    def run(self, raw: Any) -> tuple[dict[str, str], str] | None:
        """(The parse of this record's run, the same dict for every record of it: never
        change it; this record's id), or None if the record is not one nova packed."""
        last = self._last
        if last is not None and len(raw) == 1:
            # Of the run: its <rest> (from the id's closing quote on) right after an id as long
            # as the last record's, and a plain id: the id's place is known, nothing to search.
            name, value = raw[0]
            rest, headers, end = last
            if (
                value is not None
                and len(value) - len(rest) == end
                and name == _PACKED
                and value.endswith(rest)
                and value.startswith(_ID_FIRST)
            ):
                raw_id = value[_ID_AT:end]
                if raw_id.isalnum():
                    return headers, raw_id.decode("ascii")
        return self._new_run(raw)

    def _new_run(self, raw: Any) -> tuple[dict[str, str], str] | None:
        if not raw or len(raw) != 1 or raw[0][0] != _PACKED:
            return None
        value: bytes = raw[0][1] or b""
        end = value.find(b'"', _ID_AT) if value.startswith(_ID_FIRST) else -1
        if end <= _ID_AT:
            return None
        raw_id = value[_ID_AT:end]
        if not raw_id.isalnum():
            return None
        task_id = raw_id.decode("ascii")
        last = self._last
        if last is not None and len(value) - len(last[0]) == end and value.endswith(last[0]):
            self._last = (last[0], last[1], end)  # the run goes on with ids of another length
            return last[1], task_id
        headers = _decode_headers(raw)
        rest = value[end:]
        if headers.get(_ID) != task_id or any(key in rest for key in _ID_KEYS):
            return None
        self._last = (rest, headers, end)
        return headers, task_id

    def decode(self, raw: Any) -> dict[str, str]:
        run = self.run(raw)
        if run is None:
            return _decode_headers(raw)
        shared, task_id = run
        headers = shared.copy()
        headers[_ID] = task_id  # the id's key stays first
        return headers


def _decode_plain(raw: Any) -> dict[str, str]:
    try:
        return {k: v.decode() for k, v in raw}
    except UnicodeDecodeError:
        return {k: v.decode("utf-8", "replace") for k, v in raw}
    except AttributeError:  # a header without a value (None)
        return {k: (v or b"").decode("utf-8", "replace") for k, v in raw}
