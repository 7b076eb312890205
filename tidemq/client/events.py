"""Session lifecycle events (MQTTX's event names), each with a timestamp.

``EventBus.on(type, fn)`` registers a listener for one event type (or ``None`` for all) and
returns a function that unregisters it. Listeners are plain functions, called in order
when the event happens; a coroutine function is run as a task (events are rare: a task
per event is fine here, unlike per message). A failing listener is logged and skipped.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["Event", "EventBus", "EventType"]

log = logging.getLogger("tidemq.client.events")


class EventType(StrEnum):
    SESSION_ADDED = "session_added"
    SESSION_REMOVED = "session_removed"
    SESSION_CONNECTING = "session_connecting"
    SESSION_CONNECTED = "session_connected"
    SESSION_READY = "session_ready"  # connected, and its builder subscriptions are in place
    SESSION_DISCONNECTED = "session_disconnected"  # data["error"]: why
    SESSION_RECONNECTING = "session_reconnecting"  # data["attempt"], data["delay"]
    SESSION_STATE_CHANGED = "session_state_changed"  # data["old_state"], data["new_state"]


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    session: str
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)


EventListener = Callable[[Event], Any]


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[tuple[EventType | None, EventListener]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def on(self, event_type: EventType | str | None, listener: EventListener) -> Callable[[], None]:
        """Call *listener(event)* for *event_type* (None: every event); returns an unregister."""
        key = None if event_type is None else EventType(event_type)
        entry = (key, listener)
        self._listeners.append(entry)

        def off() -> None:
            if entry in self._listeners:
                self._listeners.remove(entry)

        return off

    def emit(self, event: Event) -> None:
        for key, listener in list(self._listeners):
            if key is not None and key is not event.type:
                continue
            try:
                result = listener(event)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
            except Exception:
                log.exception("event listener failed on %s", event.type.value)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event listener failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for the coroutine listeners still running."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
