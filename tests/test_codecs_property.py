"""Codecs round-trip arbitrary tasks; bad bytes raise DecodeError carrying them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nova
from nova._codecs import CodecRegistry
from nova._envelope import decode_task, shared_headers, task_headers
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
    headers = task_headers(shared, "id-1", body, codec)
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
