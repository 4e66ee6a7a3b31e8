"""Lifecycle events: written to the store and pushed to live subscribers."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Any

from qumran.daemon.domain import Event, Reason, State
from qumran.daemon.store import EventRecord, Store

log = logging.getLogger(__name__)


class EventBus:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._subscribers: set[asyncio.Queue[EventRecord]] = set()

    def emit(
        self,
        uuid: str,
        vm: str,
        owner: int,
        event: Event,
        state: State,
        reason: Reason,
        detail: str = "",
    ) -> EventRecord:
        """Record one event (the store keeps and the API sends the enums' string values)."""
        record = self._store.add_event(
            uuid, vm, owner, event.value, state.value, reason.value, detail
        )
        log.info("vm %s: %s (state %s, reason %s) %s", vm, event.value, state.value,
                 reason.value, detail)  # fmt: skip
        self._store.after_commit(lambda: self._push(record))  # never an uncommitted event
        return record

    def _push(self, record: EventRecord) -> None:
        for queue in list(self._subscribers):
            if queue.qsize() < 1000:
                queue.put_nowait(record)

    def subscribe(self) -> asyncio.Queue[EventRecord]:
        queue: asyncio.Queue[EventRecord] = asyncio.Queue()
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[EventRecord]) -> None:
        self._subscribers.discard(queue)

    def history(self, since: int, owner: int | None) -> list[dict[str, Any]]:
        return [asdict(e) for e in self._store.events(since, owner)]
