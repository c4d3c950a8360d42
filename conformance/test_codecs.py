"""S13 every format round-trips; a consumer decodes any format by content type."""

from __future__ import annotations

import pytest

import nova
from conformance.backends import Backend
from conformance.conftest import QueueFactory, Seen

FORMATS = list(nova.MessageFormat)
PAYLOAD = bytes(range(256)) + "héllo ✓".encode()
HEADERS = {"tenant": "a", "trace-id": "0af7651916cd43dd8448eb211c80319c", "empty": "", "ünï": "cödé"}


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
async def test_s13_format_round_trips(backend: Backend, make_queue: QueueFactory, seen: Seen,
                                      fmt: nova.MessageFormat) -> None:
    queue = make_queue(message_format=fmt)
    result = await queue.enqueue(nova.Task("mail.send", PAYLOAD, headers=HEADERS),
                                 priority=nova.Priority.HIGH, queue="fmt")
    await queue.start(seen.handler, queues=["fmt"])
    await backend.wait_for(lambda: len(seen) == 1)
    task = seen.tasks[0]
    assert (task.type, task.payload, dict(task.headers)) == ("mail.send", PAYLOAD, HEADERS)
    assert (task.id, task.queue, task.priority, task.attempt) == (result.id, "fmt", nova.Priority.HIGH, 1)
    assert task.enqueued_at is not None


async def test_s13_one_queue_carries_mixed_formats(backend: Backend, make_queue: QueueFactory, seen: Seen) -> None:
    for fmt in FORMATS:
        producer = make_queue(message_format=fmt)
        await producer.enqueue(nova.Task(fmt.name, fmt.name.encode(), headers={"f": fmt.name}))
    consumer = make_queue()  # JSON by default, decodes everything by content type
    await consumer.start(seen.handler)
    await backend.wait_for(lambda: len(seen) == len(FORMATS))
    assert sorted((t.type, t.payload, t.headers["f"]) for t in seen.tasks) == sorted(
        (f.name, f.name.encode(), f.name) for f in FORMATS)


class Rot13Codec:
    """A custom codec: JSON with a rotated type name, to prove the custom path is used."""

    content_type = "application/x-rot13-json"
    carries_envelope = True

    def __init__(self) -> None:
        self.inner = nova.JsonCodec()
        self.encoded = 0

    def encode(self, body: nova.TaskBody) -> bytes:
        self.encoded += 1
        import codecs

        return self.inner.encode(nova.TaskBody(codecs.encode(body.type, "rot13"), body.payload, body.headers))

    def decode(self, data: bytes) -> nova.TaskBody:
        import codecs

        body = self.inner.decode(data)
        return nova.TaskBody(codecs.decode(body.type, "rot13"), body.payload, body.headers)


async def test_s13_custom_codec(backend: Backend, make_queue: QueueFactory, seen: Seen) -> None:
    codec = Rot13Codec()
    queue = make_queue(codec=codec)
    await queue.enqueue(nova.Task("secret", b"x"))
    await queue.start(seen.handler)
    await backend.wait_for(lambda: len(seen) == 1)
    assert seen.tasks[0].type == "secret" and codec.encoded == 1
