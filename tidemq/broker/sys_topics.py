"""$SYS topics, published retained every ``sys_interval`` seconds from the one scheduler.

Two families, so both EMQX and Mosquitto dashboards find what they look for:

* EMQX style ``$SYS/brokers/<node>/version``, ``.../uptime``, ``.../datetime``,
  ``.../clients/connected``, ``.../stats/...``;
* Mosquitto style ``$SYS/broker/version``, ``uptime``, ``clients/{connected,disconnected,
  total,maximum}``, ``messages/{received,sent,stored}``, ``publish/messages/{received,sent,
  dropped}``, ``bytes/{received,sent}``, ``subscriptions/count``, ``retained messages/count``
  and ``load/{messages,bytes,publish}/{received,sent}/{1min,5min,15min}`` moving averages.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import BrokerCore
    from .timers import TimerEntry

_WINDOWS = (("1min", 60.0), ("5min", 300.0), ("15min", 900.0))


class SysPublisher:
    def __init__(self, core: BrokerCore) -> None:
        self.core = core
        self.interval = core.settings.sys_interval
        self._entry: TimerEntry | None = None
        self._last: dict[str, float] = {}
        self._last_time = time.monotonic()
        self._load: dict[tuple[str, str], float] = {}

    def start(self) -> None:
        self.publish_static()
        self.tick()

    def stop(self) -> None:
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None

    def _pub(self, topic: str, value: object) -> None:
        self.core.publish_internal(topic, str(value).encode(), retain=True)

    def publish_static(self) -> None:
        core = self.core
        version = f"tidemq {core.settings.version}".strip()
        node = core.settings.node_name
        self._pub("$SYS/broker/version", version)
        self._pub(f"$SYS/brokers/{node}/version", core.settings.version)
        self._pub(f"$SYS/brokers/{node}/sysdescr", "TideMQ MQTT broker")

    def tick(self) -> None:
        core = self.core
        stats = core.stats
        node = core.settings.node_name
        now = time.monotonic()
        connected = core.connected_count
        total = len(core.sessions)
        uptime = int(stats.uptime)
        subs = core.tree.count
        values = {
            "$SYS/broker/uptime": f"{uptime} seconds",
            "$SYS/broker/clients/connected": connected,
            "$SYS/broker/clients/active": connected,
            "$SYS/broker/clients/disconnected": total - connected,
            "$SYS/broker/clients/total": total,
            "$SYS/broker/clients/maximum": stats.clients_maximum,
            "$SYS/broker/messages/received": stats.messages_received,
            "$SYS/broker/messages/sent": stats.messages_sent,
            "$SYS/broker/messages/stored": len(core.retained),
            "$SYS/broker/publish/messages/received": stats.publish_received,
            "$SYS/broker/publish/messages/sent": stats.publish_sent,
            "$SYS/broker/publish/messages/dropped": stats.messages_dropped,
            "$SYS/broker/bytes/received": stats.bytes_received,
            "$SYS/broker/bytes/sent": stats.bytes_sent,
            "$SYS/broker/subscriptions/count": subs,
            "$SYS/broker/retained messages/count": len(core.retained),
            f"$SYS/brokers/{node}/uptime": uptime,
            f"$SYS/brokers/{node}/datetime": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            f"$SYS/brokers/{node}/clients/connected": connected,
            f"$SYS/brokers/{node}/stats/connections/count": connected,
            f"$SYS/brokers/{node}/stats/sessions/count": total,
            f"$SYS/brokers/{node}/stats/subscriptions/count": subs,
            f"$SYS/brokers/{node}/stats/retained/count": len(core.retained),
            f"$SYS/brokers/{node}/metrics/messages/received": stats.publish_received,
            f"$SYS/brokers/{node}/metrics/messages/sent": stats.publish_sent,
            f"$SYS/brokers/{node}/metrics/messages/dropped": stats.messages_dropped,
            f"$SYS/brokers/{node}/metrics/bytes/received": stats.bytes_received,
            f"$SYS/brokers/{node}/metrics/bytes/sent": stats.bytes_sent,
        }
        elapsed = max(now - self._last_time, 1e-6)
        for name, counter in (
            ("messages/received", stats.messages_received),
            ("messages/sent", stats.messages_sent),
            ("publish/received", stats.publish_received),
            ("publish/sent", stats.publish_sent),
            ("bytes/received", stats.bytes_received),
            ("bytes/sent", stats.bytes_sent),
        ):
            rate = (counter - self._last.get(name, counter)) * 60.0 / elapsed  # per minute
            self._last[name] = counter
            for label, window in _WINDOWS:
                # Exponentially damped moving average, as Mosquitto's load figures are.
                factor = math.exp(-elapsed / window)
                key = (name, label)
                avg = self._load.get(key, rate) * factor + rate * (1 - factor)
                self._load[key] = avg
                values[f"$SYS/broker/load/{name}/{label}"] = f"{avg:.2f}"
        self._last_time = now
        for topic, value in values.items():
            self._pub(topic, value)
        core.sys_publisher = self.tick
        self._entry = core.scheduler.call_later(self.interval, self.tick)
