"""Everything that reaches into aiokafka's private parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Any

log = logging.getLogger("nova.kafka")


def _bare(tp: Any, record: Any) -> Any:
    """The record maker of nova's fetch results: the parsed record itself."""
    return record


class _BareRecordResults(OrderedDict[Any, Any]):
    """aiokafka's fetched results by partition, whose records come out as they were parsed.

    aiokafka's consumer wraps every record it hands out in a ConsumerRecord (a dataclass
    of eleven fields, ~1 us a record: ~12 % of a nova drain). nova reads five of them, which
    the parsed record (aiokafka's DefaultRecord) has under the same names: offset, timestamp,
    key, value, headers (a list instead of a tuple); topic and partition come from the
    partition's state. This dict replaces the fetcher's ``_records`` and gives each fetch
    result stored in it a record maker that returns the record as it is (only for this
    consumer: nothing of aiokafka's is changed for anyone else). aiokafka internals,
    guarded: if they are not where expected, records stay ConsumerRecords and nothing else
    changes (``tests/brokers/test_kafka.py`` fails then, so an aiokafka upgrade says so).
    """

    def __setitem__(self, tp: Any, result: Any) -> None:
        records = getattr(result, "_partition_records", None)
        if records is not None and hasattr(records, "_consumer_record"):
            with contextlib.suppress(AttributeError):  # (read-only: it keeps making ConsumerRecords)
                records._consumer_record = _bare
        super().__setitem__(tp, result)


def _hand_over_bare_records(consumer: Any) -> None:
    """Have ``consumer`` hand out parsed records as they are (see _BareRecordResults)."""
    fetcher: Any = getattr(consumer, "_fetcher", None)
    results = getattr(fetcher, "_records", None)
    if type(results) is not OrderedDict:
        log.debug("aiokafka's fetcher is not as expected: records come as ConsumerRecords")
        return
    fetcher._records = _BareRecordResults(results)  # results fetched already stay as they are


async def _closed(conn: Any) -> None:
    """Close a probe connection and wait (up to a second) until its socket is closed.

    A TLS connection closes only after its close_notify exchange: left to finish in the
    background, its socket outlives a caller that stops the event loop right after a
    refused connect (an "unclosed transport" when collected later)."""
    closing = conn.close()
    if conn._protocol is None or closing is None:  # no socket was ever opened
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(closing), 1.0)
