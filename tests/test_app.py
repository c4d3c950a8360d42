"""nova.App on SimBroker and a VirtualClock: routing by task type, default queues, unknown
types, time limits, batches, stops, and the task named in log records."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import timedelta

import pytest

import nova
from nova._naming import ready_topic
from nova.sim import SimBroker, VirtualClock

BACKOFF = nova.RetryPolicy(max_retries=1, backoff=nova.ConstantBackoff(timedelta(seconds=5)))


class DeadLetters:
    """Consumes a queue's dead-letter queue on the same broker."""

    def __init__(self, broker: SimBroker) -> None:
        self.queue = nova.TaskQueue(broker)
        self.tasks: list[nova.Task] = []

    async def start(self, queue: str) -> None:
        async def keep(task: nova.Task) -> None:
            self.tasks.append(task)

        await self.queue.start(keep, queues=[nova.dead_letter_queue(queue)])


async def test_tasks_are_routed_by_type_and_queue(broker: SimBroker, clock: VirtualClock) -> None:
    app = nova.App(broker)
    got: list[tuple[str, str, str]] = []

    @app.task("email")
    async def send_email(task: nova.Task) -> None:
        got.append(("send_email", task.type, task.queue))

    @app.task("sms")
    def send_sms(task: nova.Task) -> None:  # sync: runs in a thread
        got.append(("send_sms", task.type, task.queue))

    @app.task("resize", queue="images")
    async def resize(task: nova.Task) -> None:
        got.append(("resize", task.type, task.queue))

    assert app.queues == {"default": ["email", "sms"], "images": ["resize"]}
    for kind in ("email", "sms", "resize"):
        await app.enqueue(nova.Task(kind, b"x"))
    await app.start()
    await clock.advance(timedelta(seconds=1))
    assert sorted(got) == [("resize", "resize", "images"), ("send_email", "email", "default"),
                           ("send_sms", "sms", "default")]
    await app.stop()
    assert send_email.__name__ == "send_email"  # the decorator hands the function back as it was


async def test_enqueue_goes_to_the_queue_the_type_is_registered_on(broker: SimBroker) -> None:
    app = nova.App(broker)

    @app.task("resize", queue="images")
    async def resize(task: nova.Task) -> None: ...

    result = await app.enqueue(nova.Task("resize", b"..."))
    assert result.queue == "images"
    assert broker.depth(ready_topic("nova", "images", nova.Priority.NORMAL)) == 1
    assert (await app.enqueue(nova.Task("unregistered", b""))).queue == "default"
    assert (await app.enqueue(nova.Task("resize", b""), queue="other")).queue == "other"
    results = await app.enqueue_batch([nova.Task("resize", b"1"), nova.Task("resize", b"2")])
    assert [r.queue for r in results] == ["images", "images"]
    with pytest.raises(nova.ValidationError, match="several queues"):
        await app.enqueue_batch([nova.Task("resize", b"1"), nova.Task("email", b"2")])
    await app.stop()


async def test_a_type_without_a_handler_is_dead_lettered_once(broker: SimBroker, clock: VirtualClock) -> None:
    app = nova.App(broker, retry=BACKOFF)
    handled: list[nova.Task] = []

    @app.task("email")
    async def send_email(task: nova.Task) -> None:
        handled.append(task)

    dead = DeadLetters(broker)
    await dead.start("default")
    result = await app.enqueue(nova.Task("emial", b"typo"), queue="default")
    await app.start()
    await clock.advance(timedelta(hours=1))  # long past any retry backoff
    assert handled == []
    assert [t.id for t in dead.tasks] == [result.id]
    letter = dead.tasks[0]
    assert letter.error == "no handler for task type 'emial' on queue 'default'"
    assert letter.attempt == 1 and letter.payload == b"typo"
    await app.stop()
    await dead.queue.stop()


async def test_timeout_then_retry_then_dead_letter(broker: SimBroker, clock: VirtualClock) -> None:
    app = nova.App(broker, retry=BACKOFF)
    started: list[float] = []
    finished: list[int] = []

    @app.task("slow", timeout=timedelta(seconds=10))
    async def slow(task: nova.Task) -> None:
        started.append(clock.time())
        await clock.sleep(60)
        finished.append(task.attempt)

    dead = DeadLetters(broker)
    await dead.start("default")
    await app.enqueue(nova.Task("slow"))
    t0 = clock.time()
    await app.start()
    await clock.advance(timedelta(minutes=5))
    assert [s - t0 for s in started] == [0.0, 15.0]  # 10 s limit, then the 5 s backoff
    assert finished == []  # both attempts were cancelled at the limit
    assert len(dead.tasks) == 1
    assert dead.tasks[0].attempt == 2
    assert dead.tasks[0].error == "TaskTimeout: the handler was still running after its timeout of 10 s"
    await app.stop()
    await dead.queue.stop()


async def test_a_handler_that_finishes_in_time_is_not_cut(broker: SimBroker, clock: VirtualClock) -> None:
    app = nova.App(broker)
    done: list[float] = []

    @app.task("quick", timeout=10)
    async def quick(task: nova.Task) -> None:
        await clock.sleep(9.5)
        done.append(clock.time())

    await app.enqueue(nova.Task("quick"))
    await app.start()
    await clock.advance(timedelta(seconds=30))
    assert len(done) == 1
    assert broker.depth(ready_topic("nova", "default", nova.Priority.NORMAL)) == 0  # acked
    await app.stop()


async def test_a_handlers_own_timeout_error_is_an_ordinary_failure(broker: SimBroker, clock: VirtualClock) -> None:
    app = nova.App(broker, retry=nova.RetryPolicy(max_retries=0))

    @app.task("x", timeout=10)
    async def x(task: nova.Task) -> None:
        raise TimeoutError("the SMTP server did not answer")

    dead = DeadLetters(broker)
    await dead.start("default")
    await app.enqueue(nova.Task("x"))
    await app.start()
    await clock.advance(timedelta(seconds=1))
    assert [t.error for t in dead.tasks] == ["TimeoutError: the SMTP server did not answer"]
    await app.stop()
    await dead.queue.stop()


async def test_a_sync_handler_past_its_timeout_fails_and_its_thread_is_left_to_finish() -> None:
    # The system clock: a thread blocks a VirtualClock until it ends, so it could not time out.
    broker = SimBroker(clock=nova.SystemClock())
    release = threading.Event()
    finished = threading.Event()
    app = nova.App(broker, retry=nova.RetryPolicy(max_retries=0))

    @app.task("stuck", timeout=0.05)
    def stuck(task: nova.Task) -> None:
        release.wait(30)
        finished.set()

    dead = DeadLetters(broker)
    await dead.start("default")
    await app.enqueue(nova.Task("stuck"))
    await app.start()
    async with asyncio.timeout(30):
        while not dead.tasks:  # noqa: ASYNC110 - a condition polled against a deadline
            await asyncio.sleep(0.01)
    assert dead.tasks[0].error is not None and dead.tasks[0].error.startswith("TaskTimeout:")
    assert not finished.is_set()  # the attempt failed while its thread still ran
    release.set()
    await asyncio.to_thread(finished.wait, 30)
    assert finished.is_set()
    await app.stop()
    await dead.queue.stop()


async def test_taskqueue_start_takes_a_timeout_too(broker: SimBroker, clock: VirtualClock) -> None:
    queue = nova.TaskQueue(broker, retry=nova.RetryPolicy(max_retries=0))
    dead = DeadLetters(broker)
    await dead.start("default")

    async def slow(task: nova.Task) -> None:
        await clock.sleep(3)

    await queue.enqueue(nova.Task("slow"))
    await queue.start(slow, timeout=timedelta(seconds=2))
    await clock.advance(timedelta(seconds=10))
    assert [t.error for t in dead.tasks] == ["TaskTimeout: the handler was still running after its timeout of 2 s"]
    with pytest.raises(nova.ValidationError, match="timeout must be > 0"):
        await nova.TaskQueue(broker).start(slow, timeout=0)
    await queue.stop()
    await dead.queue.stop()


async def test_batches_by_type_and_other_types_dead_lettered(broker: SimBroker, clock: VirtualClock) -> None:
    app = nova.App(broker)
    batches: list[list[str]] = []

    @app.batch("report", nova.CountAggregator(2), queue="reports")
    async def reports(tasks: list[nova.Task]) -> None:
        batches.append([t.payload.decode() for t in tasks])

    dead = DeadLetters(broker)
    await dead.start("reports")
    await app.enqueue_batch([nova.Task("report", b"a"), nova.Task("report", b"b")])
    await app.enqueue(nova.Task("invoice", b"c"), queue="reports")
    await app.start()
    await clock.advance(timedelta(seconds=1))
    assert batches == [["a", "b"]]
    assert [t.error for t in dead.tasks] == ["no handler for task type 'invoice' on queue 'reports'"]
    await app.stop()
    await dead.queue.stop()


async def test_graceful_stop_lets_handlers_finish_and_hands_over_partial_batches(
    broker: SimBroker, clock: VirtualClock
) -> None:
    app = nova.App(broker)
    done: list[str] = []
    batches: list[int] = []

    @app.task("slow")
    async def slow(task: nova.Task) -> None:
        await clock.sleep(20)
        done.append(task.type)

    @app.batch("report", nova.CountAggregator(100), queue="reports")
    async def reports(tasks: list[nova.Task]) -> None:
        batches.append(len(tasks))

    await app.enqueue(nova.Task("slow"))
    await app.enqueue_batch([nova.Task("report") for _ in range(3)])
    await app.start()
    await clock.advance(timedelta(seconds=1))
    assert app.consuming and app.running_handlers == 1
    stopping = asyncio.create_task(app.stop(timeout=timedelta(seconds=60)))
    await clock.advance(timedelta(seconds=30))
    await stopping
    assert done == ["slow"] and batches == [3]
    assert not app.consuming
    assert broker.depth(ready_topic("nova", "default", nova.Priority.NORMAL)) == 0


async def test_forced_stop_cuts_a_graceful_one_short_and_acks_nothing(
    broker: SimBroker, clock: VirtualClock
) -> None:
    app = nova.App(broker)
    done: list[str] = []

    @app.task("slow")
    async def slow(task: nova.Task) -> None:
        await clock.sleep(20)
        done.append(task.type)

    await app.enqueue(nova.Task("slow"))
    await app.start()
    await clock.advance(timedelta(seconds=1))
    graceful = asyncio.create_task(app.stop(timeout=timedelta(seconds=60)))
    await clock.advance(timedelta(seconds=1))
    graceful.cancel()  # the second signal
    with pytest.raises(asyncio.CancelledError):
        await graceful
    await app.stop(graceful=False)
    await clock.advance(timedelta(minutes=1))
    assert done == []
    assert broker.depth(ready_topic("nova", "default", nova.Priority.NORMAL)) == 1  # back for the next worker


async def test_one_forwarder_per_app_and_delays_still_fire(broker: SimBroker, clock: VirtualClock) -> None:
    app = nova.App(broker)
    at: list[float] = []

    @app.task("a")
    async def a(task: nova.Task) -> None: ...

    @app.task("b", queue="other")
    async def b(task: nova.Task) -> None:
        at.append(clock.time())

    await app.start()
    assert [tq._forwarder is not None for tq in app._consumers] == [True, False]
    t0 = clock.time()
    await app.enqueue(nova.Task("b"), process_in=timedelta(minutes=7))
    await clock.advance(timedelta(minutes=10))
    assert [t - t0 for t in at] == [420.0]
    await app.stop()


async def test_start_only_some_queues(broker: SimBroker, clock: VirtualClock) -> None:
    app = nova.App(broker)

    @app.task("a")
    async def a(task: nova.Task) -> None: ...

    @app.task("b", queue="images")
    async def b(task: nova.Task) -> None: ...

    with pytest.raises(nova.ConfigurationError, match="no handlers on queue\\(s\\) 'imgs'; this app has handlers "
                                                      "on 'default', 'images'"):
        await app.start(["imgs"])
    await app.start(["images"])
    assert [tq.worker.queues for tq in app._consumers if tq.worker] == [["images"]]
    with pytest.raises(nova.StateError, match="starts once"):
        await app.start()
    with pytest.raises(nova.StateError, match=r"before app\.start"):
        app.task("c")(a)
    await app.stop()


async def test_async_with_runs_the_handlers(broker: SimBroker, clock: VirtualClock) -> None:
    app = nova.App(broker)
    got: list[str] = []

    @app.task("a")
    async def a(task: nova.Task) -> None:
        got.append(task.type)

    async with app:
        await app.enqueue(nova.Task("a"))
        await clock.advance(timedelta(seconds=1))
    assert got == ["a"]
    with pytest.raises(nova.ClosedError):
        await app.enqueue(nova.Task("a"))


def test_registration_errors_say_what_to_fix() -> None:
    app = nova.App(SimBroker())

    @app.task("email")
    async def send_email(task: nova.Task) -> None: ...

    with pytest.raises(nova.ConfigurationError, match=r"already has a handler .*send_email"):
        app.task("email")(send_email)
    with pytest.raises(nova.ConfigurationError, match="has task handlers \\(email\\); a queue takes task handlers or"):
        app.batch("report", nova.CountAggregator(10))(send_email)
    app.batch("report", nova.CountAggregator(10), queue="reports")(send_email)
    with pytest.raises(nova.ConfigurationError, match="has a batch handler"):
        app.task("x", queue="reports")(send_email)
    with pytest.raises(nova.ConfigurationError, match="one batch handler per queue"):
        app.batch("y", nova.CountAggregator(10), queue="reports")(send_email)
    with pytest.raises(nova.ConfigurationTypeError, match="aggregator must be"):
        app.batch("y", 10)  # type: ignore[arg-type]
    with pytest.raises(nova.ValidationError, match="queue name"):
        app.task("x", queue="bad queue")
    with pytest.raises(nova.ConfigurationError, match="task type"):
        app.task("")
    with pytest.raises(TypeError, match="the task type must be a str"):
        app.task(b"email")  # type: ignore[arg-type]
    with pytest.raises(nova.ValidationError, match="timeout must be > 0"):
        app.task("x", timeout=-1)
    app.task("email", queue="other")(send_email)
    with pytest.raises(nova.ValidationError, match="handlers on queues default, other: pass queue="):
        app.queue_for("email")
    with pytest.raises(nova.ConfigurationTypeError, match=r"options of nova\.TaskQueue"):
        nova.App(SimBroker(), concurency=4)
    with pytest.raises(nova.ConfigurationTypeError, match="takes a broker URL"):
        nova.App(42)  # type: ignore[arg-type]
    with pytest.raises(nova.ConfigurationError, match="unknown broker URL scheme"):
        nova.App("kafak://127.0.0.1:9092")


async def test_an_app_without_handlers_says_so(broker: SimBroker) -> None:
    with pytest.raises(nova.ConfigurationError, match="no handlers"):
        await nova.App(broker).start()


async def test_log_records_name_the_task(broker: SimBroker, clock: VirtualClock) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    keep.addFilter(nova.TaskLogFilter())
    log = logging.getLogger("shop.tasks")
    log.addHandler(keep)
    log.setLevel(logging.INFO)
    app = nova.App(broker)

    @app.task("email")
    async def send_email(task: nova.Task) -> None:
        log.info("sending")

    @app.task("sms")
    def send_sms(task: nova.Task) -> None:
        log.info("texting")  # in the handler's thread

    @app.batch("report", nova.CountAggregator(2), queue="reports")
    async def reports(tasks: list[nova.Task]) -> None:
        log.info("reporting")

    try:
        email = await app.enqueue(nova.Task("email"))
        sms = await app.enqueue(nova.Task("sms"))
        await app.enqueue_batch([nova.Task("report"), nova.Task("report")])
        await app.start()
        await clock.advance(timedelta(seconds=1))
        log.info("outside")
        await app.stop()
    finally:
        log.removeHandler(keep)
    tags = {r.getMessage(): r.task for r in records}  # type: ignore[attr-defined]
    assert tags == {
        "sending": f" [task={email.id} type=email queue=default attempt=1]",
        "texting": f" [task={sms.id} type=sms queue=default attempt=1]",
        "reporting": " [batch of 2 type=report queue=reports]",
        "outside": "",
    }
    by_message = {r.getMessage(): r for r in records}
    assert by_message["sending"].task_id == email.id  # type: ignore[attr-defined]
    assert by_message["outside"].task_id is None  # type: ignore[attr-defined]
    assert by_message["sending"].task_attempt == 1  # type: ignore[attr-defined]
    assert by_message["outside"].task_attempt is None  # type: ignore[attr-defined]
