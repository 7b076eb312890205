"""Typed application messages as the client hands them to handlers and iterators."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from tidemq.protocol import NO_PROPERTIES, Properties, Publish

__all__ = ["Message", "PublishResult"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One received application message.

    Attributes:
        topic: the topic name (topic aliases already resolved).
        payload: the raw payload bytes.
        qos: the QoS it was delivered with.
        retain: True for a retained message sent because of a new subscription.
        dup: True when the broker says this may be a re-delivery.
        properties: the MQTT 5 properties (``NO_PROPERTIES`` for MQTT 3), including
            ``user_properties`` and ``subscription_identifiers``.
        session: the name of the client that received it (``Client(name=...)``; the
            session name under a ``SessionManager``), or "".
    """

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    properties: Properties = NO_PROPERTIES
    session: str = ""

    @classmethod
    def from_publish(cls, packet: Publish, session: str = "") -> Message:
        props = packet.properties
        if props.topic_alias is not None:
            # An alias is a detail of one connection; the topic is already resolved.
            props = replace(props, topic_alias=None)
        return cls(
            topic=packet.topic,
            payload=packet.payload,
            qos=packet.qos,
            retain=packet.retain,
            dup=packet.dup,
            properties=props,
            session=session,
        )

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8 (raises ``UnicodeDecodeError`` if it is not)."""
        return self.payload.decode("utf-8")

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)

    @property
    def user_properties(self) -> tuple[tuple[str, str], ...]:
        return self.properties.user_properties


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What ``Client.publish`` returns once the broker acknowledged the message.

    Attributes:
        packet_id: the packet identifier used (0 for QoS 0).
        reason_code: the PUBACK/PUBREC/PUBCOMP reason code (always 0 for MQTT 3; v5 may
            say 0x10 "no matching subscribers", which is a success).
        properties: the acknowledgement's properties (``reason_string``, user properties).
    """

    packet_id: int = 0
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
