"""``Message``: an application message inside the broker, stored once and shared.

Every subscriber queue and in-flight table references the same ``Message`` (Mosquitto's
ref-counted ``mosquitto_msg_store``). Its wire bytes are built lazily, once per *wire
variant*: (MQTT 5 or not, QoS, RETAIN flag, subscription identifiers). For QoS 1/2 the
variant is a (head, tail) pair around the packet id, so a receiver costs one splice.
Messages with a Message Expiry Interval are re-encoded per delivery, because the interval
sent must be the time remaining [MQTT-3.3.2-6].
"""

from __future__ import annotations

import time
from dataclasses import replace

from tidemq.protocol import (
    NO_PROPERTIES,
    Properties,
    encode_properties,
    encode_publish_parts,
)

_monotonic = time.monotonic


class Message:
    __slots__ = (
        "_first",
        "_topic_b",
        "_variants",
        "expires_at",
        "payload",
        "properties",
        "qos",
        "retain",
        "sender",
        "store_id",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties = NO_PROPERTIES,
        sender: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        # Forwarded properties: never the per-hop Topic Alias or Subscription Identifiers.
        self.properties = properties
        self.sender = sender
        self.expires_at = expires_at  # time.monotonic() deadline, None = never
        self._topic_b: bytes | None = None
        self.store_id = 0  # its id in the message store once persisted (0: not stored)
        # The first wire variant built (most messages have one receiver, or receivers
        # alike): (v5, qos, retain, sub_ids, parts), checked without building a key.
        # Further variants go to a dict made when needed.
        self._first: tuple[bool, int, bool, tuple[int, ...], tuple[bytes, bytes]] | None = None
        self._variants: (
            dict[tuple[bool, int, bool, tuple[int, ...]], tuple[bytes, bytes]] | None
        ) = None

    @classmethod
    def from_publish_properties(
        cls,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties,
        sender: str | None,
    ) -> Message:
        expires_at = None
        if properties is not NO_PROPERTIES:
            if properties.message_expiry_interval is not None:
                expires_at = _monotonic() + properties.message_expiry_interval
            if properties.topic_alias is not None or properties.subscription_identifiers:
                properties = replace(properties, topic_alias=None, subscription_identifiers=())
        return cls(topic, payload, qos, retain, properties, sender, expires_at)

    def expired(self, now: float | None = None) -> bool:
        if self.expires_at is None:
            return False
        return (now if now is not None else _monotonic()) >= self.expires_at

    def remaining_expiry(self) -> int | None:
        if self.expires_at is None:
            return None
        return max(0, int(self.expires_at - _monotonic() + 0.999))

    @property
    def topic_bytes(self) -> bytes:
        topic_b = self._topic_b
        if topic_b is None:
            topic_b = self._topic_b = self.topic.encode("utf-8")
        return topic_b

    def wire(
        self, v5: bool, qos: int, retain: bool, sub_ids: tuple[int, ...] = ()
    ) -> tuple[bytes, bytes]:
        """(head, tail) of this message as a PUBLISH of the given variant.

        QoS 0: ``head + tail``; QoS 1/2: ``head + packet_id + tail``. Shared by every
        receiver of the variant unless the message carries an expiry interval.
        """
        first = self._first
        if first is not None:
            if first[0] == v5 and first[1] == qos and first[2] == retain and first[3] == sub_ids:
                return first[4]
            variants = self._variants
            if variants is not None:
                parts = variants.get((v5, qos, retain, sub_ids))
                if parts is not None:
                    return parts
        props = b""
        if v5:
            props = self.properties_for(sub_ids)
        parts = encode_publish_parts(self.topic_bytes, self.payload, qos, retain, False, props)
        if self.expires_at is None:
            if first is None:
                self._first = (v5, qos, retain, sub_ids, parts)
            else:
                if self._variants is None:
                    self._variants = {}
                self._variants[(v5, qos, retain, sub_ids)] = parts
        return parts

    def properties_for(self, sub_ids: tuple[int, ...], topic_alias: int | None = None) -> bytes:
        """The encoded MQTT 5 property block for one delivery."""
        props = self.properties
        remaining = self.remaining_expiry()
        if not sub_ids and remaining is None and topic_alias is None:
            return encode_properties(props)
        return encode_properties(
            replace(
                props,
                subscription_identifiers=sub_ids,
                message_expiry_interval=remaining,
                topic_alias=topic_alias,
            )
        )
