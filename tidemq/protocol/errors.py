"""One error hierarchy for the protocol package, each error carrying its MQTT reason code.

Theory of operation (after h11's ``LocalProtocolError``/``RemoteProtocolError`` split and h2's
class-level error codes):

* ``LocalProtocolError``: *we* misused the API (built an illegal packet, sent PUBLISH before
  CONNECT, exceeded the peer's Receive Maximum). Nothing has been written; fix the caller.
* ``RemoteProtocolError``: the *peer* broke the protocol. The connection is finished. Its
  ``reason_code`` says why, and ``reply`` is the packet to send before closing (a v5
  DISCONNECT, or a CONNACK while the CONNECT is being handled, or ``None`` where MQTT 3 says
  to close without a word). ``MQTTConnection`` fills ``reply`` and queues its bytes in
  ``data_to_send()`` before raising, so the I/O layer only flushes and closes.

Anything else escaping ``MQTTConnection.receive_data`` or ``decode`` is a bug in this package,
and the fuzz tests check exactly that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .reason_codes import ReasonCode

if TYPE_CHECKING:
    from .packets import Packet

__all__ = [
    "ClientIdentifierNotValid",
    "LocalProtocolError",
    "MQTTError",
    "MalformedPacket",
    "PacketTooLarge",
    "ProtocolError",
    "ProtocolViolation",
    "ReceiveMaximumExceeded",
    "RemoteProtocolError",
    "TopicAliasInvalid",
    "TopicNameInvalid",
    "UnsupportedProtocolVersion",
]


class MQTTError(Exception):
    """Base of every error this package raises. Cannot be raised directly.

    Attributes:
        reason_code: the MQTT 5 reason code describing the failure.
        rule: the normative statement broken, e.g. ``"[MQTT-3.3.1-4]"``, when there is one.
    """

    reason_code: ReasonCode = ReasonCode.UNSPECIFIED_ERROR

    def __init__(
        self, message: str, *, reason_code: int | None = None, rule: str | None = None
    ) -> None:
        if type(self) in (MQTTError, ProtocolError):
            raise TypeError(f"{type(self).__name__} is abstract; raise a concrete subclass")
        super().__init__(message)
        self.message = message
        if reason_code is not None:
            self.reason_code = ReasonCode(reason_code)
        self.rule = rule

    def __str__(self) -> str:
        if self.rule:
            return f"{self.message} {self.rule}"
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, int(self.reason_code), self.rule))


def _rebuild(cls: type[MQTTError], message: str, code: int, rule: str | None) -> MQTTError:
    return cls(message, reason_code=code, rule=rule)


class ProtocolError(MQTTError):
    """Abstract parent of the local and remote protocol errors."""


class LocalProtocolError(ProtocolError):
    """Our side misused the API; the connection is unchanged and nothing was sent."""

    reason_code = ReasonCode.PROTOCOL_ERROR


class RemoteProtocolError(ProtocolError):
    """The peer violated the protocol; the connection must be closed.

    Attributes:
        reply: the packet to send before closing, or ``None`` to close silently.
    """

    reason_code = ReasonCode.PROTOCOL_ERROR
    reply: Packet | None = None


class MalformedPacket(RemoteProtocolError):
    """The bytes cannot be parsed according to the specification (MQTT 5.0 §4.13)."""

    reason_code = ReasonCode.MALFORMED_PACKET


class ProtocolViolation(RemoteProtocolError):
    """The bytes parse, but the packet breaks a rule of the protocol (MQTT 5.0 §4.13)."""

    reason_code = ReasonCode.PROTOCOL_ERROR


class PacketTooLarge(RemoteProtocolError):
    """The fixed header announces more than the configured maximum packet size."""

    reason_code = ReasonCode.PACKET_TOO_LARGE


class ReceiveMaximumExceeded(RemoteProtocolError):
    reason_code = ReasonCode.RECEIVE_MAXIMUM_EXCEEDED


class TopicAliasInvalid(RemoteProtocolError):
    reason_code = ReasonCode.TOPIC_ALIAS_INVALID


class TopicNameInvalid(RemoteProtocolError):
    reason_code = ReasonCode.TOPIC_NAME_INVALID


class UnsupportedProtocolVersion(RemoteProtocolError):
    """CONNECT named a protocol level we do not speak [MQTT-3.1.2-2]."""

    reason_code = ReasonCode.UNSUPPORTED_PROTOCOL_VERSION


class ClientIdentifierNotValid(RemoteProtocolError):
    reason_code = ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
