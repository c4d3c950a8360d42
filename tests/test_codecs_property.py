"""Codecs round-trip arbitrary tasks; bad bytes raise DecodeError carrying them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nova
from nova._codecs import CodecRegistry, parts_decoder, parts_encoder
from nova._envelope import TaskDecoder, decode_task, shared_headers, task_headers
from tests.fuzzing import FUZZ_SCALE

text = st.text(min_size=0, max_size=40)
header_names = st.text(min_size=1, max_size=20).filter(lambda s: not s.lower().startswith("nova-"))
bodies = st.builds(
    nova.TaskBody,
    type=st.text(min_size=1, max_size=40),
    payload=st.binary(max_size=300),
    headers=st.dictionaries(header_names, text, max_size=5),
)
CODECS = [nova.JsonCodec(), nova.SonicCodec(), nova.BlobCodec(), nova.ProtobufCodec()]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: type(c).__name__)
@given(body=bodies)
@settings(max_examples=150 * FUZZ_SCALE, deadline=None)
def test_round_trip_through_the_envelope(codec: nova.MessageCodec, body: nova.TaskBody) -> None:
    data = codec.encode(body)
    shared = shared_headers(codec=codec, queue="q", priority=nova.Priority.LOW, attempt=2, enqueued_at=1.5, eta=2.25)
    headers = task_headers(shared, "id-1", body.type, body.headers, codec)
    task = decode_task(CodecRegistry(nova.JsonCodec()), data, headers)
    assert (task.type, task.payload, dict(task.headers)) == (body.type, body.payload, dict(body.headers))
    assert (task.id, task.queue, task.priority, task.attempt) == ("id-1", "q", nova.Priority.LOW, 2)
    assert task.eta is not None and task.eta.timestamp() == 2.25


def test_json_and_sonic_share_one_wire_format() -> None:
    body = nova.TaskBody("t", b"\xff\x00bin", {"a": "b"})
    assert nova.JsonCodec().decode(nova.SonicCodec().encode(body)) == body
    assert nova.SonicCodec().decode(nova.JsonCodec().encode(body)) == body


@given(data=st.binary(max_size=200))
@settings(max_examples=200 * FUZZ_SCALE, deadline=None)
def test_garbage_raises_decode_error_with_the_bytes(data: bytes) -> None:
    registry = CodecRegistry(nova.JsonCodec())
    for content_type in ("application/json", "application/x-protobuf; messageType=nova.v1.Task"):
        caught: nova.DecodeError | None = None
        try:
            decode_task(registry, data, {"nova-id": "x", "nova-content-type": content_type})
        except nova.DecodeError as exc:  # some random bytes are valid protobuf: that is fine
            caught = exc
        if caught is not None:
            assert caught.data == data
            assert caught.__cause__ is not None


def test_unknown_content_type() -> None:
    with pytest.raises(nova.DecodeError, match="no codec"):
        CodecRegistry(nova.JsonCodec()).decode(b"x", "text/x-nope")


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: type(c).__name__)
@given(body=bodies)
@settings(max_examples=100 * FUZZ_SCALE, deadline=None)
def test_encode_and_decode_parts_are_encode_and_decode(codec: nova.MessageCodec, body: nova.TaskBody) -> None:
    data = codec.encode(body)
    assert parts_encoder(codec)(body.type, body.payload, body.headers) == data
    decoded = codec.decode(data)
    assert parts_decoder(codec)(data) == (decoded.type, decoded.payload, decoded.headers)


class _PlainCodec:
    """A user's codec: encode and decode only, no encode_parts or decode_parts."""

    content_type = "text/x-plain"
    carries_envelope = True

    def encode(self, body: nova.TaskBody) -> bytes:
        return f"{body.type}:".encode() + body.payload

    def decode(self, data: bytes) -> nova.TaskBody:
        type_, _, payload = data.partition(b":")
        if not type_:
            raise ValueError("no type")
        return nova.TaskBody(type_.decode(), payload, {"via": "plain"})


def _fields(task: nova.Task) -> tuple[object, ...]:
    return (task.type, task.payload, dict(task.headers), task.id, task.queue, task.priority, task.attempt,
            task.eta, task.enqueued_at, task.error)


def _outcome(decode: Callable[[bytes, dict[str, str]], nova.Task], data: bytes,
             headers: dict[str, str]) -> tuple[object, ...] | str:
    try:
        return _fields(decode(data, headers))
    except nova.DecodeError as exc:
        return f"DecodeError: {exc} (data kept: {exc.data == data})"


# Headers as enqueue calls make them (runs that differ only in the id), and variations a
# stream can hold: another attempt, priority, queue, due time, error, codec, or malformed ones.
_variants = st.fixed_dictionaries({}, optional={
    "nova-priority": st.sampled_from(["1", "2", "3", "7", "x"]),
    "nova-attempt": st.sampled_from(["1", "2", "x"]),
    "nova-queue": st.sampled_from(["a", "b"]),
    "nova-eta": st.sampled_from(["1700000000000", "1700000000001", "soon"]),
    "nova-error": st.sampled_from(["ValueError: x", ""]),
    "nova-content-type": st.sampled_from(["application/json", "application/octet-stream", "text/x-plain",
                                          "text/x-nope"]),
    "nova-type": st.sampled_from(["t", "u"]),
    "nova-headers": st.sampled_from(['{"k":"v"}', "[1]", "{"]),
})


@given(runs=st.lists(st.tuples(_variants, st.integers(1, 4), st.booleans()), min_size=1, max_size=12),
       body=bodies)
@settings(max_examples=150 * FUZZ_SCALE, deadline=None)
def test_a_stream_decodes_as_each_task_alone(runs: list[tuple[dict[str, str], int, bool]],
                                              body: nova.TaskBody) -> None:
    """TaskDecoder reads a run's envelope once: every task still decodes as decode_task would."""
    registry = CodecRegistry(nova.SonicCodec())
    registry._by_type[_PlainCodec.content_type] = _PlainCodec()
    decoder = TaskDecoder(registry)
    n = 0
    for variant, length, with_id in runs:
        content_type = variant.get("nova-content-type", "application/json")
        codec = registry._by_type.get(content_type, nova.JsonCodec())
        data = codec.encode(body)
        for _ in range(length):
            n += 1
            headers = {"nova-id": f"id{n}", **variant} if with_id else dict(variant)
            assert _outcome(decoder.decode, data, headers) == _outcome(
                lambda d, h: decode_task(registry, d, h), data, headers
            )


def test_a_users_codec_without_the_parts_methods() -> None:
    registry = CodecRegistry(_PlainCodec())
    headers = {"nova-id": "1", "nova-content-type": "text/x-plain"}
    assert parts_encoder(_PlainCodec())("greet", b"hello", {}) == b"greet:hello"
    task = TaskDecoder(registry).decode(b"greet:hello", headers)
    assert (task.type, task.payload, dict(task.headers)) == ("greet", b"hello", {"via": "plain"})
    with pytest.raises(nova.DecodeError, match="cannot decode a text/x-plain task: no type"):
        TaskDecoder(registry).decode(b":x", headers)


@given(body=bodies)
@settings(max_examples=200 * FUZZ_SCALE, deadline=None)
def test_sonic_writes_the_json_document_orjson_would(body: nova.TaskBody) -> None:
    """SONIC joins the common shape from its two strings: byte for byte orjson's document."""
    import orjson

    from nova._codecs import _json_doc

    payload = bytes(body.payload)
    expected = orjson.dumps(_json_doc(body.type, payload, body.headers))
    assert nova.SonicCodec().encode_parts(body.type, payload, body.headers) == expected
    assert nova.SonicCodec().encode_parts(body.type, payload, {}) == orjson.dumps(_json_doc(body.type, payload, {}))
