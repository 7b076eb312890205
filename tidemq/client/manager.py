"""``SessionManager``: many named client sessions, driven together (MQTTX's manager).

A ``Session`` is a named ``Client`` plus the subscriptions its builder asked for. The
manager adds, removes, lists and connects sessions; publishes and subscribes on one or all
of them; routes messages to handlers (``handle`` / ``handle_to``) or async iterators
(``listen`` / ``listen_to``); reports per-session status; and turns each client's
notifications into typed ``Event`` objects (``on_event``).

Connecting is done in the background (``Client.start``): a session whose broker is down is
not an error, it is ``CONNECTING``/``RECONNECTING`` until the broker is back;
``wait_for_session`` and ``wait_for_all`` wait for that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tidemq.protocol import Properties

from .client import Client
from .errors import ClientError, ConfigurationError, MQTTConnectionError
from .events import Event, EventBus, EventListener, EventType
from .message import Message, PublishResult
from .options import ClientMetrics, ClientState
from .streams import Handler, MessageStream
from .subscription import Subscription

if TYPE_CHECKING:
    from .forwarder import ForwarderRegistry

__all__ = ["Listener", "ManagerRoute", "Session", "SessionManager"]

log = logging.getLogger("tidemq.client.manager")

_CLIENT_EVENTS = {
    "connecting": EventType.SESSION_CONNECTING,
    "connected": EventType.SESSION_CONNECTED,
    "disconnected": EventType.SESSION_DISCONNECTED,
    "reconnecting": EventType.SESSION_RECONNECTING,
    "state_changed": EventType.SESSION_STATE_CHANGED,
}


class Session:
    """A named client and the subscriptions it makes once connected.

    Args:
        name: unique within a manager.
        client: the client (its ``name`` is set to *name*).
        subscriptions: (topic filter, QoS, handler or None) subscribed on first connect.
        persistent: whether the client keeps its session in a store (for metrics).
    """

    def __init__(
        self,
        name: str,
        client: Client,
        *,
        subscriptions: Iterable[tuple[str, int, Handler | None]] = (),
        persistent: bool = False,
    ) -> None:
        if not name:
            raise ConfigurationError("a session needs a name")
        self.name = name
        self.client = client
        client.name = name
        self.initial_subscriptions = list(subscriptions)
        self.persistent = persistent or client.store is not None
        self.ready = asyncio.Event()
        self._subscribed_once = False

    @property
    def status(self) -> ClientState:
        return self.client.state

    @property
    def is_connected(self) -> bool:
        return self.client.is_connected

    @property
    def metrics(self) -> ClientMetrics:
        return self.client.metrics

    def reset_metrics(self) -> None:
        self.client.metrics = ClientMetrics()

    @property
    def subscribed_topics(self) -> list[str]:
        return list(self.client.subscriptions)

    def start(self) -> None:
        """Connect in the background (retrying by the client's reconnect policy)."""
        if self.client.state in (ClientState.DISCONNECTED, ClientState.CLOSED):
            self.client.start()

    async def publish(
        self,
        topic: str,
        payload: bytes | str | float | None = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> PublishResult:
        return await self.client.publish(topic, payload, qos, retain, properties)

    def subscribe(self, topic: str, qos: int = 0, handler: Handler | None = None) -> Subscription:
        return self.client.subscribe(topic, qos, handler)

    async def unsubscribe(self, topic: str) -> list[int]:
        return await self.client.unsubscribe(topic)

    async def close(self) -> None:
        await self.client.close()

    def __repr__(self) -> str:
        return f"<Session {self.name!r} {self.status.name.lower()}>"


class ManagerRoute:
    """Handlers installed by ``handle``/``handle_to``; ``stop()`` removes them."""

    def __init__(self, manager: SessionManager, topic: str, qos: int, handler: Handler) -> None:
        self._manager = manager
        self.topic = topic
        self.qos = qos
        self.handler = handler
        self.subscriptions: dict[str, Subscription] = {}
        self.stopped = False

    async def _attach(self, session: Session) -> None:
        if self.stopped or session.name in self.subscriptions:
            return
        sub = session.client.subscribe(self.topic, self.qos, self.handler)
        self.subscriptions[session.name] = sub
        await sub

    def stop(self) -> None:
        """Stop calling the handler. The broker subscriptions stay; see ``unsubscribe``."""
        self.stopped = True
        self._manager._routes.discard(self)
        for name, sub in self.subscriptions.items():
            session = self._manager._sessions.get(name)
            if session is not None:
                session.client._remove_routes(sub.routes)

    async def unsubscribe(self) -> None:
        """Stop, and unsubscribe the topic on every session this route subscribed."""
        self.stop()
        for name in list(self.subscriptions):
            session = self._manager._sessions.get(name)
            if session is not None and session.is_connected:
                try:
                    await session.client.unsubscribe(self.topic)
                except ClientError as exc:
                    log.warning("unsubscribing %r on %s failed: %s", self.topic, name, exc)


class Listener:
    """An async iterator of the messages of a topic on one or all sessions.

    Use ``async with manager.listen("t/#") as listener: async for msg in listener`` (or
    call ``await listener.start()`` first and ``listener.stop()`` at the end).
    ``msg.session`` names the session that received each message.
    """

    def __init__(self, route: ManagerRoute, stream: MessageStream, targets: list[Session]):
        self.route = route
        self.stream = stream
        self._targets = targets
        self._started: asyncio.Future[None] | None = None

    def start(self) -> asyncio.Future[None]:
        if self._started is None:
            self._started = asyncio.ensure_future(self._subscribe())
        return self._started

    async def _subscribe(self) -> None:
        await asyncio.gather(*(self.route._attach(s) for s in self._targets))

    def stop(self) -> None:
        self.route.stop()
        self.stream.finish()

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> Message:
        await self.start()
        return await self.stream.__anext__()

    async def get(self, timeout: float | None = None) -> Message:
        await self.start()
        return await self.stream.get(timeout)

    async def __aenter__(self) -> Listener:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SessionManager:
    """Many named sessions, managed together. ``async with SessionManager() as manager``
    closes every session on exit."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._events = EventBus()
        self._routes: set[ManagerRoute] = set()
        self._global_routes: list[ManagerRoute] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._close_hooks: list[Callable[[], Awaitable[None]]] = []
        self._forwarders: ForwarderRegistry | None = None

    @property
    def forwarders(self) -> ForwarderRegistry:
        """This manager's ``ForwarderRegistry`` (made on first use; closing the manager
        stops its forwarders first)."""
        if self._forwarders is None:
            from .forwarder import ForwarderRegistry  # forwarder.py imports this module

            self._forwarders = ForwarderRegistry(self)
        return self._forwarders

    def _add_close_hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._close_hooks.append(hook)

    async def __aenter__(self) -> SessionManager:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- sessions --------------------------------------------------------------------

    def add_session(
        self, session: Session | Client, name: str | None = None, *, connect: bool = True
    ) -> Session:
        """Add a session (or a bare ``Client``, named *name*), and start connecting it.

        Raises:
            ConfigurationError: the name is taken or missing.
        """
        if isinstance(session, Client):
            session = Session(name or session.name or session.client_id, session)
        elif name is not None and name != session.name:
            raise ConfigurationError("name is only for adding a bare Client")
        if session.name in self._sessions:
            raise ConfigurationError(f"session {session.name!r} already exists")
        self._sessions[session.name] = session
        session.client.add_listener(lambda event, data: self._client_event(session, event, data))
        self._emit(EventType.SESSION_ADDED, session.name)
        if connect:
            session.start()
        return session

    async def remove_session(self, name: str) -> None:
        """Close the session and forget it."""
        session = self.get_session(name)
        del self._sessions[name]
        await session.close()
        self._emit(EventType.SESSION_REMOVED, name)

    def get_session(self, name: str) -> Session:
        try:
            return self._sessions[name]
        except KeyError:
            raise ConfigurationError(f"no session named {name!r}") from None

    def list_sessions(self) -> list[str]:
        return list(self._sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, name: object) -> bool:
        return name in self._sessions

    def connect_all(self) -> None:
        """Start connecting every session that is not connected or connecting."""
        for session in self._sessions.values():
            session.start()

    def status(self, name: str) -> ClientState:
        return self.get_session(name).status

    def statuses(self) -> dict[str, ClientState]:
        """Every session's status (MQTTX ``GetAllSessionsStatus``; ``int()`` gives the code)."""
        return {name: s.status for name, s in self._sessions.items()}

    async def wait_for_session(self, name: str, timeout: float | None = None) -> None:
        """Wait until the session is connected and ready.

        Raises:
            MQTTConnectionError: *timeout* passed (``is_timeout``) or it gave up.
        """
        session = self.get_session(name)
        try:
            await asyncio.wait_for(self._ready(session), timeout)
        except TimeoutError:
            raise MQTTConnectionError(
                f"session {name!r} not ready within {timeout} s", timeout=True
            ) from None

    async def _ready(self, session: Session) -> None:
        await session.client.wait_connected()
        await session.ready.wait()

    async def wait_for_all(self, timeout: float | None = None) -> None:
        """Wait until every session is connected and ready (same errors)."""
        try:
            await asyncio.wait_for(
                asyncio.gather(*(self._ready(s) for s in self._sessions.values())), timeout
            )
        except TimeoutError:
            late = [n for n, s in self._sessions.items() if not s.ready.is_set()]
            raise MQTTConnectionError(
                f"sessions not ready within {timeout} s: {', '.join(late)}", timeout=True
            ) from None

    async def disconnect_all(self) -> None:
        await asyncio.gather(*(s.close() for s in self._sessions.values()))

    async def close(self) -> None:
        """Stop the forwarders, close every session (they stay listed, as CLOSED) and wait
        for event tasks."""
        for hook in self._close_hooks:
            try:
                await hook()
            except Exception:
                log.exception("a close hook of the session manager failed")
        for route in list(self._routes):
            route.stop()
        await self.disconnect_all()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._events.drain()

    # --- messaging -------------------------------------------------------------------

    async def publish_to(
        self,
        name: str,
        topic: str,
        payload: bytes | str | float | None = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> PublishResult:
        return await self.get_session(name).publish(topic, payload, qos, retain, properties)

    async def publish_to_all(
        self,
        topic: str,
        payload: bytes | str | float | None = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> dict[str, PublishResult | ClientError]:
        """Publish on every session; returns each session's result or error."""
        names = list(self._sessions)
        results = await asyncio.gather(
            *(self.publish_to(n, topic, payload, qos, retain, properties) for n in names),
            return_exceptions=True,
        )
        return dict(zip(names, _results(results), strict=True))

    async def subscribe_to(
        self, name: str, topic: str, handler: Handler | None = None, qos: int = 0
    ) -> list[int]:
        return await self.get_session(name).subscribe(topic, qos, handler)

    async def subscribe_all(
        self, topic: str, handler: Handler | None = None, qos: int = 0
    ) -> dict[str, list[int] | ClientError]:
        names = list(self._sessions)
        results = await asyncio.gather(
            *(self.subscribe_to(n, topic, handler, qos) for n in names), return_exceptions=True
        )
        return dict(zip(names, _results(results), strict=True))

    async def unsubscribe_to(self, name: str, topic: str) -> list[int]:
        return await self.get_session(name).unsubscribe(topic)

    async def unsubscribe_all(self, topic: str) -> dict[str, list[int] | ClientError]:
        names = list(self._sessions)
        results = await asyncio.gather(
            *(self.unsubscribe_to(n, topic) for n in names), return_exceptions=True
        )
        return dict(zip(names, _results(results), strict=True))

    async def handle(self, topic: str, handler: Handler, qos: int = 0) -> ManagerRoute:
        """Call *handler(msg)* for *topic* on every session, including ones added later."""
        route = ManagerRoute(self, topic, qos, handler)
        self._routes.add(route)
        self._global_routes.append(route)
        await asyncio.gather(*(route._attach(s) for s in self._sessions.values() if s.is_connected))
        return route

    async def handle_to(
        self, name: str, topic: str, handler: Handler, qos: int = 0
    ) -> ManagerRoute:
        """Call *handler(msg)* for *topic* on one session."""
        session = self.get_session(name)
        route = ManagerRoute(self, topic, qos, handler)
        self._routes.add(route)
        await route._attach(session)
        return route

    def listen(self, topic: str, qos: int = 0, *, queue_size: int = 0) -> Listener:
        """An async iterator of *topic*'s messages on every (connected) session."""
        return self._listener(list(self._sessions.values()), topic, qos, queue_size)

    def listen_to(self, name: str, topic: str, qos: int = 0, *, queue_size: int = 0) -> Listener:
        """An async iterator of *topic*'s messages on one session."""
        return self._listener([self.get_session(name)], topic, qos, queue_size)

    def _listener(self, targets: list[Session], topic: str, qos: int, queue_size: int) -> Listener:
        stream = MessageStream(queue_size)
        route = ManagerRoute(self, topic, qos, stream.put)
        self._routes.add(route)
        return Listener(route, stream, targets)

    # --- events ----------------------------------------------------------------------

    def on_event(
        self, event_type: EventType | str | None, listener: EventListener
    ) -> Callable[[], None]:
        """Call *listener(event)* on events of *event_type* (None: all); returns an
        unregister function."""
        return self._events.on(event_type, listener)

    def _emit(self, event_type: EventType, session: str, **data: Any) -> None:
        self._events.emit(Event(event_type, session, data))

    def _client_event(self, session: Session, event: str, data: dict[str, Any]) -> None:
        kind = _CLIENT_EVENTS.get(event)
        if kind is None:
            return
        if event == "state_changed":
            data = {
                "old_state": data["old_state"].name.lower(),
                "new_state": data["new_state"].name.lower(),
            }
        self._emit(kind, session.name, **data)
        if event == "connected":
            self._spawn(self._on_connected(session))
        elif event == "disconnected":
            session.ready.clear()

    async def _on_connected(self, session: Session) -> None:
        try:
            if not session._subscribed_once:
                session._subscribed_once = True
                for topic, qos, handler in session.initial_subscriptions:
                    await session.client.subscribe(topic, qos, handler)
            for route in self._global_routes:
                if not route.stopped:
                    await route._attach(session)
        except ClientError as exc:
            log.error("session %s: subscribing failed: %s", session.name, exc)
            return
        if session.is_connected:
            session.ready.set()
            self._emit(EventType.SESSION_READY, session.name)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _results(results: list[Any]) -> list[Any]:
    out = []
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, ClientError):
            raise r
        out.append(r)
    return out
