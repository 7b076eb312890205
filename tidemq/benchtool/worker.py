"""One process's share of a bench: its clients, on one event loop.

A worker owns the clients whose global index ``g`` (0-based) satisfies
``g % workers == index``; client ``g`` starts ``g * connect_interval`` after the run
started, so N workers together keep the requested connection rate. Each client is one
task: connect (record the CONNACK latency), subscribe (``sub``), then publish (``pub``) or
just hold the connection until the run stops.

Hot paths stay cheap: a QoS 0 publisher calls ``Client.publish`` back to back in bursts
(the client queues the bytes and only suspends when the socket buffer is full, so nothing
is awaited per message) and yields to the loop once per burst; QoS 1/2 publishers run
``inflight`` lanes per client, each awaiting its own acknowledgement; subscribers count in a
synchronous handler called on the client's read path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

from tidemq.client import (
    AuthenticationError,
    Client,
    ClientError,
    Message,
    MQTTConnectionError,
    PublishError,
    SubscriptionError,
)

from .options import MAGIC, STAMP_SIZE, BenchOptions, TopicTemplate
from .stats import WorkerStats

__all__ = ["BURST", "Worker", "classify"]

log = logging.getLogger("tidemq.benchtool")

# QoS 0 messages a publisher hands to its client before it lets the loop run (to flush the
# batch to the socket and read): big enough to amortise the loop pass, small enough that
# hundreds of publishers on one loop still take turns every few milliseconds.
BURST = 64
# After the run stops, how long clients get to finish in-flight QoS 1/2 exchanges and
# disconnect before they are cancelled.
STOP_GRACE = 5.0

_STAMP = struct.Struct(">4sQ")
_TIME_AT = struct.Struct(">Q").unpack_from


def classify(exc: BaseException) -> str:
    """A short error kind for the report (``connection_refused``, ``tls_error``…)."""
    if isinstance(exc, AuthenticationError):
        return "auth_refused"
    if isinstance(exc, SubscriptionError):
        return "subscribe_refused"
    if isinstance(exc, PublishError):
        return "publish_timeout" if exc.is_timeout else "publish_refused"
    if isinstance(exc, MQTTConnectionError):
        if exc.reason_code is not None:
            return "connack_refused"
        if exc.is_timeout:
            return "connect_timeout"
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLError) or "TLS" in str(exc):
            return "tls_error"
        if isinstance(cause, ConnectionRefusedError):
            return "connection_refused"
        if isinstance(cause, OSError):
            return "network_error"
        return "connection_error"
    if isinstance(exc, NotImplementedError):
        return "unsupported_url"
    if isinstance(exc, ClientError):
        return exc.category.value + "_error"
    return type(exc).__name__


class _Sub:
    """A subscriber's own count, for ``-L``."""

    __slots__ = ("count", "done")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.count = 0
        self.done = done


class Worker:
    """Runs this process's clients until the run stops; ``stats`` has the counters."""

    def __init__(
        self,
        options: BenchOptions,
        index: int = 0,
        workers: int = 1,
        *,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.options = options
        self.index = index
        self.indexes = range(index, options.count, workers)
        self.stats = WorkerStats()
        self.stopped_by: str | None = None
        self.on_ready = on_ready
        self._settled = 0
        self._stopping = False
        self._stop: asyncio.Event | None = None
        self._sleeping: set[asyncio.Task[Any]] = set()
        self._connecting: set[asyncio.Task[Any]] = set()
        self._waiting: set[asyncio.Future[None]] = set()
        self._ssl: ssl.SSLContext | None = None
        self._filler = b"x" * max(options.size - STAMP_SIZE, 0)
        # Too small for the send time: a constant payload, and no latency for `bench sub`.
        self._short = b"x" * options.size if options.size < STAMP_SIZE else None

    # --- control -----------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Stop the run (from the loop's thread): no more connections or messages."""
        if self.stopped_by is None:
            self.stopped_by = reason
            self.stats.stopped_at = time.time()
        if self._stop is not None:
            self._stop.set()

    async def run(self) -> None:
        """Start the clients, wait for the stop, then wind everything down."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self.stopped_by is not None:
            self._stop.set()
        opts = self.options
        self._ssl = opts.ssl_context()
        started = loop.time()
        tasks: list[asyncio.Task[None]] = []
        launcher = loop.create_task(self._launch(started, tasks))
        timer = None
        if opts.duration is not None:
            timer = loop.call_at(started + opts.duration, self.stop, "duration")
        if not self.indexes:
            self._mark_ready()
            self.stop("no clients")
        try:
            await self._stop.wait()
        finally:
            self._stopping = True
            if timer is not None:
                timer.cancel()
            launcher.cancel()
            for task in [*self._sleeping, *self._connecting]:
                task.cancel()
            for future in list(self._waiting):
                if not future.done():
                    future.set_result(None)
            with contextlib.suppress(asyncio.CancelledError):
                await launcher
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _launch(self, started: float, tasks: list[asyncio.Task[None]]) -> None:
        loop = asyncio.get_running_loop()
        interval = self.options.connect_interval
        for g in self.indexes:
            if interval:
                delay = started + g * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # the requested pace, not a readiness wait
            tasks.append(loop.create_task(self._client(g)))

    def _mark_ready(self) -> None:
        self.stats.ready = True
        if self.on_ready is not None:
            self.on_ready()

    def _settle(self) -> None:
        self._settled += 1
        if self._settled == len(self.indexes):
            self._mark_ready()

    def _ended(self) -> None:
        st = self.stats
        st.ended += 1
        if st.ended == len(self.indexes) and not self._stopping:
            everyone_finished = st.finished == st.ended
            self.stop("limit" if everyone_finished else "all clients ended")

    # --- one client --------------------------------------------------------------------

    async def _client(self, g: int) -> None:
        opts = self.options
        st = self.stats
        number = opts.start_number + g
        client_id = opts.client_id(number)
        st.attempted += 1
        if not st.first_attempt:
            st.first_attempt = time.time()
        client: Client | None = None
        connected = False
        lost = False
        try:
            try:
                client = Client(
                    opts.url,
                    client_id=client_id,
                    version=opts.version,
                    username=opts.username,
                    password=opts.password,
                    keepalive=opts.keepalive,
                    clean_start=opts.clean,
                    ssl=self._ssl,
                    connect_timeout=opts.connect_timeout,
                    reconnect=False,
                )
                began = time.perf_counter_ns()
                task = asyncio.current_task()
                assert task is not None
                self._connecting.add(task)
                try:
                    await client.connect()
                finally:
                    self._connecting.discard(task)
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
                # The run stopped while this client was connecting: neither connected
                # nor failed, and not worth waiting for.
                st.aborted += 1
                return
            except (ClientError, NotImplementedError, OSError) as exc:
                st.failed += 1
                st.error(classify(exc))
                log.debug("client %s could not connect: %s", client_id, exc)
                self._settle()
                return
            st.connect_latency.record((time.perf_counter_ns() - began) // 1000)
            st.connected += 1
            st.active += 1
            st.last_connack = time.time()
            connected = True
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.add(done)

            def on_event(event: str, data: dict[str, Any]) -> None:
                nonlocal lost
                if event == "disconnected" and not lost:
                    lost = True
                    st.lost += 1
                    st.active -= 1
                    st.error("connection_lost")
                    if not done.done():
                        done.set_result(None)

            client.add_listener(on_event)
            try:
                await self._work(client, number, client_id, done)
            finally:
                self._waiting.discard(done)
        finally:
            self._ended()
            if client is not None and connected:
                if not lost:
                    st.active -= 1
                with contextlib.suppress(ClientError, OSError):
                    await client.close()

    async def _work(
        self, client: Client, number: int, client_id: str, done: asyncio.Future[None]
    ) -> None:
        opts = self.options
        templates = [
            TopicTemplate(t, number=number, client_id=client_id, username=opts.username)
            for t in opts.topics
        ]
        if opts.command == "sub":
            sub = _Sub(done)
            try:
                await client.subscribe(
                    [t.fixed_once() for t in templates], opts.qos, handler=self._receiver(sub)
                )
            except ClientError as exc:
                self.stats.error(classify(exc))
                log.debug("client %s: subscribe failed: %s", client_id, exc)
                self._settle()
                return
            self.stats.subscribed += 1
            self._settle()
            if not self._stopping:
                await done
            return
        self._settle()
        if opts.command == "pub" and not self._stopping:
            if opts.qos == 0:
                await self._publish_qos0(client, templates[0])
            else:
                await self._publish_acked(client, templates[0])
            if not self._stopping and not client.is_connected:
                return
            if not self._stopping:
                self.stats.finished += 1
            return
        if not self._stopping:
            await done  # conn: hold the connection until the run stops or it is lost

    # --- publishing ----------------------------------------------------------------------

    def _payload(self) -> bytes:
        if self._short is not None:
            return self._short
        return _STAMP.pack(MAGIC, time.time_ns()) + self._filler

    async def _sleep(self, delay: float) -> None:
        """Sleep (cancelled at once when the run stops)."""
        task = asyncio.current_task()
        assert task is not None
        self._sleeping.add(task)
        try:
            await asyncio.sleep(delay)
        finally:
            self._sleeping.discard(task)

    async def _publish_qos0(self, client: Client, template: TopicTemplate) -> None:
        opts = self.options
        st = self.stats
        loop = asyncio.get_running_loop()
        publish = client.publish
        interval = opts.msg_interval
        limit = opts.limit
        retain = opts.retain
        payload = self._payload
        per_message = template.per_message
        topic = template.text
        seq = 0
        start = loop.time()
        while not self._stopping:
            if interval:
                now = loop.time()
                due = int((now - start) / interval) + 1
                if limit and due > limit:
                    due = limit
                n = due - seq
                if n <= 0:
                    try:
                        await self._sleep(start + seq * interval - now)
                    except asyncio.CancelledError:
                        return
                    continue
                n = min(n, BURST)
            else:
                n = min(BURST, limit - seq) if limit else BURST
            done = 0
            try:
                for k in range(seq + 1, seq + n + 1):
                    await publish(
                        template.expand(k) if per_message else topic, payload(), 0, retain
                    )
                    done += 1
            except ClientError as exc:
                if not isinstance(exc, MQTTConnectionError):
                    st.error(classify(exc))
                st.sent += done
                return
            finally:
                if done:
                    if not st.first_message:
                        st.first_message = time.time()
                    st.last_message = time.time()
            seq += n
            st.sent += n
            if limit and seq >= limit:
                return
            # Let the client flush its batch and read, and the other clients take their
            # turn (also when this one is behind its schedule and has no time to sleep).
            await asyncio.sleep(0)

    async def _publish_acked(self, client: Client, template: TopicTemplate) -> None:
        opts = self.options
        loop = asyncio.get_running_loop()
        state = {"next": 0, "start": loop.time()}
        lanes = [
            loop.create_task(self._lane(client, template, state)) for _ in range(opts.inflight)
        ]
        await asyncio.gather(*lanes, return_exceptions=True)

    async def _lane(self, client: Client, template: TopicTemplate, state: dict[str, Any]) -> None:
        opts = self.options
        st = self.stats
        loop = asyncio.get_running_loop()
        publish = client.publish
        interval, limit, qos, retain = opts.msg_interval, opts.limit, opts.qos, opts.retain
        record = st.latency.record
        clock = time.perf_counter_ns
        while not self._stopping:
            seq = state["next"]
            if limit and seq >= limit:
                return
            state["next"] = seq + 1
            if interval:
                delay = state["start"] + seq * interval - loop.time()
                if delay > 0:
                    try:
                        await self._sleep(delay)
                    except asyncio.CancelledError:
                        return
                    if self._stopping:
                        return
            topic = template.expand(seq + 1)
            st.sent += 1
            now = time.time()
            if not st.first_message:
                st.first_message = now
            began = clock()
            try:
                await publish(topic, self._payload(), qos, retain)
            except PublishError as exc:
                st.error(classify(exc))
                continue
            except ClientError as exc:
                if not isinstance(exc, MQTTConnectionError):
                    st.error(classify(exc))  # e.g. an invalid topic
                return  # a lost connection is counted once, as connection_lost
            record((clock() - began) // 1000)
            st.acked += 1
            st.last_message = time.time()

    # --- receiving -----------------------------------------------------------------------

    def _receiver(self, sub: _Sub) -> Callable[[Message], None]:
        st = self.stats
        record = st.latency.record
        clock = time.time_ns
        limit = self.options.limit
        time_at = _TIME_AT

        def on_message(msg: Message) -> None:
            now = clock()
            st.received += 1
            payload = msg.payload
            if payload[:4] == MAGIC and len(payload) >= STAMP_SIZE:
                st.stamped += 1
                record((now - time_at(payload, 4)[0]) // 1000)
            if not st.first_message:
                st.first_message = now / 1e9
            st.last_message = now / 1e9
            sub.count += 1
            if sub.count == limit:
                st.finished += 1
                if not sub.done.done():
                    sub.done.set_result(None)

        return on_message
