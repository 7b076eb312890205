"""Bans by client id, username or peer address, kept in storage, and flapping detection.

``BanList`` answers, before any authenticator runs, whether a CONNECT is banned; a banned
client gets CONNACK 0x8A Banned (MQTT 5) or 5 Not authorized (3.1.1, which has no
"banned"). The bans live in storage (``BanRecord``) so that ``tidemq ctl ban ...``, run in
another process, reaches the broker: the list is reloaded every ``bans.refresh_interval``
seconds, so a ban made elsewhere takes effect within that interval (bans made through this
``BanList``, such as flapping bans, take effect at once). A ban whose ``until`` has passed
is ignored at once; storage deletes it at the broker's next ``purge_expired``.

When a ban takes effect (added here, or new or changed in storage at a refresh), the
connected clients it matches are disconnected, as EMQX kicks a banned client: MQTT 5 with
DISCONNECT 0x98 Administrative action, MQTT 3 by closing. The broker's
``ConnectedClients`` (given with ``attach_clients``) lists them: one pass over the
connections per batch of new bans, nothing per packet or per CONNECT.

If storage cannot be read, the last list loaded stays in force and the failure is logged:
known bans keep holding while a server backend is down. Without storage (the ``memory``
backend) the list lives in this process only: flapping bans still work, ``tidemq ctl``
has nothing to reach.

``FlappingDetector`` follows EMQX's flapping detection: a client id whose connections end
``max_count`` times within ``window_time`` seconds is banned (by client id) for
``ban_time`` seconds, with a ban stored like any other (``by = "flapping"``), so it is
visible to and can be lifted by ``tidemq ctl ban``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeAlias

from tidemq.auth.api import AuthOutcome, ClientIdentity, Verdict
from tidemq.broker.hooks import ClientInfo, DisconnectedEvent, HookPoint, Hooks
from tidemq.storage.api import BAN_KINDS, BanKind, BanRecord, Storage, StorageError

if TYPE_CHECKING:
    from tidemq.broker.interfaces import ConnectedClients
    from tidemq.config import Config

__all__ = [
    "ADMINISTRATIVE_ACTION",
    "BANNED",
    "BanList",
    "FlappingDetector",
    "ban_sources",
    "normalize_ban_value",
]

log = logging.getLogger("tidemq.auth.bans")

#: CONNACK reason code 0x8A Banned (MQTT 5); the broker sends 5 Not authorized to 3.1.1.
BANNED: Final = 0x8A
#: DISCONNECT reason code 0x98 Administrative action: a connected client a new ban matches.
ADMINISTRATIVE_ACTION: Final = 0x98

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def normalize_ban_value(kind: str, value: str) -> str:
    """The stored form of a ban's value: for ``address``, the network in its normal form
    (``10.1.2.3`` → ``10.1.2.3/32``, ``10.1.2.3/8`` → ``10.0.0.0/8``); else *value*.

    Raises:
        ValueError: an unknown kind, an empty value, or an address that is not an IP
            address or network.
    """
    if kind not in BAN_KINDS:
        raise ValueError(f"unknown ban kind {kind!r}: use one of {', '.join(BAN_KINDS)}")
    if not value:
        raise ValueError("a ban needs a value")
    if kind != "address":
        return value
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR network") from None


def _address(host: str | None) -> IPAddress | None:
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return None  # a Unix socket or other non-IP peer: address bans cannot match
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack listener's view of an IPv4 client
    return address


class BanList:
    """The bans in force, loaded from storage and refreshed periodically.

    Args:
        storage: an opened ``Storage`` (the broker's); None keeps bans in memory only.
        refresh_interval: seconds between reloads from storage; 0 loads once at ``open``.
        clock: wall clock (``time.time``); tests pass their own.
    """

    def __init__(
        self,
        storage: Storage | None,
        *,
        refresh_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.refresh_interval = refresh_interval
        self.clock = clock
        self._exact: dict[tuple[str, str], BanRecord] = {}  # (kind, value) → ban
        self._hosts: dict[IPAddress, BanRecord] = {}  # single-address bans
        self._networks: list[tuple[IPNetwork, BanRecord]] = []  # wider networks
        self._task: asyncio.Task[None] | None = None
        self._clients: ConnectedClients | None = None

    def attach_clients(self, clients: ConnectedClients | None) -> None:
        """Disconnect, from now on, the connected clients of *clients* that a ban taking
        effect matches (None: stop)."""
        self._clients = clients

    def __len__(self) -> int:
        return len(self._exact)

    @property
    def bans(self) -> list[BanRecord]:
        """The bans loaded (including any expired since the last refresh)."""
        return sorted(self._exact.values(), key=lambda b: (b.kind, b.value))

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Load the bans (a storage failure is logged: the list starts empty) and start
        the refresh task."""
        await self.refresh()
        if self.storage is not None and self.refresh_interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._refresh_loop(), name="tidemq-bans-refresh"
            )

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            await self.refresh()

    async def refresh(self) -> bool:
        """Reload the bans from storage; True on success. A failure keeps the list."""
        storage = self.storage
        if storage is None:
            return True
        try:
            records = await storage.list_bans()
        except StorageError as exc:
            log.warning("cannot load bans from storage (keeping the %d known): %s", len(self), exc)
            return False
        # Expired bans are ignored here; storage drops them at the broker's next
        # purge_expired, and `tidemq ctl ban list` does not show them.
        now = self.clock()
        before = self._exact
        active = [b for b in records if b.until is None or b.until > now]
        self._load(active)
        # New bans, and changed ones (a ban made again after it expired): the clients they
        # match may be connected.
        fresh = [b for b in active if before.get((b.kind, b.value)) != b]
        if fresh:
            self._disconnect_matching(fresh, now)
        return True

    def _load(self, records: list[BanRecord]) -> None:
        self._exact = {}
        self._hosts = {}
        self._networks = []
        for record in records:
            self._index(record)

    def _index(self, record: BanRecord) -> None:
        self._exact[(record.kind, record.value)] = record
        if record.kind != "address":
            return
        try:
            network = ipaddress.ip_network(record.value, strict=False)
        except ValueError:
            log.warning("ignoring address ban %r: not an IP address or network", record.value)
            return
        if network.num_addresses == 1:
            self._hosts[network.network_address] = record
        else:
            self._networks = [(n, r) for n, r in self._networks if r.value != record.value]
            self._networks.append((network, record))

    def _unindex(self, kind: str, value: str) -> None:
        record = self._exact.pop((kind, value), None)
        if record is None or kind != "address":
            return
        self._hosts = {a: r for a, r in self._hosts.items() if r.value != value}
        self._networks = [(n, r) for n, r in self._networks if r.value != value]

    # --- changes made through this list (at once here, and stored) -----------------------

    async def add(self, record: BanRecord) -> None:
        """Store a ban and enforce it at once.

        Raises:
            StorageError: the ban could not be stored (it is still enforced here until
                the next refresh).
        """
        self._unindex(record.kind, record.value)
        self._index(record)
        now = self.clock()
        if record.until is None or record.until > now:
            self._disconnect_matching([record], now)
        if self.storage is not None:
            await self.storage.put_ban(record)

    def _disconnect_matching(self, records: list[BanRecord], now: float) -> None:
        """Disconnect the connected clients that *records* (bans in force) match: one pass
        over the connections, each checked against these bans only."""
        clients = self._clients
        if clients is None:
            return
        probe = BanList(None, clock=self.clock)
        probe._load(records)
        for info in clients.connected_clients():
            record = probe.match(_identity(info), now)
            if record is None:
                continue
            log.info(
                "disconnecting %s (user %s, %s): banned by %s %s%s",
                info.client_id,
                info.username,
                info.peer[0] if info.peer else info.listener,
                record.kind,
                record.value,
                f" ({record.reason})" if record.reason else "",
            )
            try:
                clients.disconnect_client(info.client_id, ADMINISTRATIVE_ACTION, "banned")
            except Exception:
                # Never let one connection stop the others' disconnection or the refresh.
                log.exception("cannot disconnect banned client %s", info.client_id)

    async def remove(self, kind: BanKind, value: str) -> bool:
        """Lift a ban here and in storage; True when it existed."""
        known = (kind, value) in self._exact
        self._unindex(kind, value)
        if self.storage is None:
            return known
        return await self.storage.delete_ban(kind, value)

    # --- the check -----------------------------------------------------------------------

    def match(self, client: ClientIdentity, now: float | None = None) -> BanRecord | None:
        """The ban in force that *client* matches, or None."""
        if not self._exact:
            return None
        if now is None:
            now = self.clock()
        exact = self._exact
        candidates = [exact.get(("clientid", client.client_id))]
        if client.username is not None:
            candidates.append(exact.get(("username", client.username)))
        address = _address(client.peer_host)
        if address is not None:
            candidates.append(self._hosts.get(address))
            candidates.extend(r for n, r in self._networks if address in n)
        for record in candidates:
            if record is not None and (record.until is None or record.until > now):
                return record
        return None

    async def check(self, client: ClientIdentity) -> AuthOutcome | None:
        """The ban checker the auth plugin runs before authentication: a DENY with
        reason code 0x8A Banned for a banned client, None for the others."""
        return self.check_now(client)

    def check_now(self, client: ClientIdentity) -> AuthOutcome | None:
        """``check`` without awaiting (the list is in memory): the plugin answers a
        CONNECT synchronously when nothing else needs I/O."""
        record = self.match(client)
        if record is None:
            return None
        log.info(
            "refusing %s (user %s, %s): banned by %s %s%s",
            client.client_id,
            client.username,
            client.peer_host,
            record.kind,
            record.value,
            f" ({record.reason})" if record.reason else "",
        )
        return AuthOutcome(verdict=Verdict.DENY, reason_code=BANNED, reason="banned")


def _identity(info: ClientInfo) -> ClientIdentity:
    """What ``BanList.match`` reads of a connected client (as the plugin's CONNECT check
    sees it: the peer is the real client address, after any PROXY header)."""
    return ClientIdentity(
        client_id=info.client_id,
        username=info.username,
        peer_host=info.peer[0] if info.peer else None,
    )


class FlappingDetector:
    """Bans a client id whose connections end too often (EMQX's flapping detection).

    Args:
        bans: where the temporary bans go.
        max_count: connections ending within ``window_time`` that make a client flapping.
        window_time: the detection window, seconds.
        ban_time: how long a flapping client id is banned, seconds.
        clock: monotonic clock for the window (``time.monotonic``); the ban's times are
            taken from ``bans.clock`` (wall clock).
    """

    def __init__(
        self,
        bans: BanList,
        *,
        max_count: int = 15,
        window_time: float = 60.0,
        ban_time: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bans = bans
        self.max_count = max_count
        self.window_time = window_time
        self.ban_time = ban_time
        self.clock = clock
        self._events: dict[str, deque[float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_sweep = clock()

    def install(self, hooks: Hooks) -> Callable[[], None]:
        """Listen to ``CLIENT_DISCONNECTED`` on *hooks*; returns the unregister."""
        return hooks.register(HookPoint.CLIENT_DISCONNECTED, self.on_disconnected, name="flapping")

    def on_disconnected(self, event: DisconnectedEvent) -> None:
        """The ``CLIENT_DISCONNECTED`` hook."""
        self.record(event.client.client_id)

    def record(self, client_id: str) -> bool:
        """Count one ended connection of *client_id*; True when it is now banned."""
        now = self.clock()
        self._sweep(now)
        events = self._events.get(client_id)
        if events is None:
            events = self._events[client_id] = deque(maxlen=self.max_count)
        events.append(now)
        if len(events) < self.max_count or now - events[0] > self.window_time:
            return False
        del self._events[client_id]
        self._ban(client_id)
        return True

    def _ban(self, client_id: str) -> None:
        wall = self.bans.clock()
        record = BanRecord(
            kind="clientid",
            value=client_id,
            reason=f"flapping: {self.max_count} disconnects within {self.window_time:g} s",
            created_at=wall,
            until=wall + self.ban_time,
            by="flapping",
        )
        log.warning(
            "client %s is flapping (%d disconnects within %g s): banned for %g s",
            client_id,
            self.max_count,
            self.window_time,
            self.ban_time,
        )
        task = asyncio.get_running_loop().create_task(self._store(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store(self, record: BanRecord) -> None:
        try:
            await self.bans.add(record)  # enforced at once, stored for ctl and restarts
        except StorageError as exc:
            log.warning("cannot store the flapping ban of %s: %s", record.value, exc)

    def _sweep(self, now: float) -> None:
        # Forget clients quiet for a whole window, at most once per window, so the table
        # holds only clients seen recently.
        if now - self._last_sweep < self.window_time:
            return
        self._last_sweep = now
        horizon = now - self.window_time
        self._events = {c: e for c, e in self._events.items() if e[-1] >= horizon}

    async def drain(self) -> None:
        """Wait until the bans decided so far are stored."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def ban_sources(config: Config, storage: Storage | None) -> list[object]:
    """The plugin's ban factory (``tidemq.auth.plugin.BAN_SOURCES``): the ``BanList`` when
    there is storage to hold bans or flapping detection is on, and the
    ``FlappingDetector`` when ``flapping.enable``."""
    flapping = config.flapping
    if storage is None and not flapping.enable:
        return []  # the memory backend: no ban can exist (tidemq ctl cannot reach it)
    bans = BanList(storage, refresh_interval=config.bans.refresh_interval)
    if not flapping.enable:
        return [bans]
    detector = FlappingDetector(
        bans,
        max_count=flapping.max_count,
        window_time=flapping.window_time,
        ban_time=flapping.ban_time,
    )
    return [bans, detector]
