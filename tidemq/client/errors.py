"""Typed client errors, one class per category, each saying whether retrying may help.

The categories follow MQTTX's ``ErrorType`` (connection, authentication, subscription,
publish, configuration, storage, forwarder). Every error carries:

* ``category``: an ``ErrorCategory`` member;
* ``reason_code``: the MQTT reason code behind it when the broker sent one (else None);
* ``is_temporary``: True when the same call may succeed later (broker unreachable, busy,
  shutting down, offline buffer full, a timeout);
* ``is_timeout``: True when the error is a timeout.

Catch ``ClientError`` for all of them. Protocol errors raised by ``tidemq.protocol`` for an
illegal packet we tried to build (``LocalProtocolError``) are turned into
``ConfigurationError`` at the API boundary: they are the caller's mistake.
"""

from __future__ import annotations

from enum import Enum

from tidemq.protocol import REASON_CODE_NAMES, PacketType, ReasonCode

__all__ = [
    "AuthenticationError",
    "ClientError",
    "ConfigurationError",
    "ConnectionClosedError",
    "ErrorCategory",
    "ForwarderError",
    "MQTTConnectionError",
    "PublishError",
    "StorageError",
    "SubscriptionError",
    "connack_error",
    "reason_name",
]


class ErrorCategory(Enum):
    CONNECTION = "connection"
    AUTHENTICATION = "authentication"
    SUBSCRIPTION = "subscription"
    PUBLISH = "publish"
    CONFIGURATION = "configuration"
    STORAGE = "storage"
    FORWARDER = "forwarder"


class ClientError(Exception):
    """Base of every error the client raises.

    Args:
        message: what went wrong, for people.
        reason_code: the MQTT reason code the broker answered with, if any.
        temporary: whether trying again later may succeed.
        timeout: whether the error is a timeout (implies temporary).
    """

    category: ErrorCategory = ErrorCategory.CONNECTION

    def __init__(
        self,
        message: str,
        *,
        reason_code: int | None = None,
        temporary: bool = False,
        timeout: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason_code = reason_code
        self._temporary = temporary or timeout
        self._timeout = timeout

    @property
    def is_temporary(self) -> bool:
        return self._temporary

    @property
    def is_timeout(self) -> bool:
        return self._timeout

    def __str__(self) -> str:
        if self.reason_code is None:
            return self.message
        return f"{self.message} (reason code 0x{self.reason_code:02x})"


class MQTTConnectionError(ClientError):
    """The network connection could not be made, failed, or the broker refused us."""

    category = ErrorCategory.CONNECTION


class ConnectionClosedError(MQTTConnectionError):
    """The client was closed (or gave up reconnecting) while the operation was pending."""


class AuthenticationError(MQTTConnectionError):
    """CONNACK refused our credentials or authorisation (0x86, 0x87, 0x8A, 0x8C)."""

    category = ErrorCategory.AUTHENTICATION


class SubscriptionError(ClientError):
    """SUBACK/UNSUBACK carried a failure code. ``reason_codes`` has one per filter."""

    category = ErrorCategory.SUBSCRIPTION

    def __init__(
        self,
        message: str,
        *,
        reason_codes: tuple[int, ...] = (),
        reason_code: int | None = None,
        temporary: bool = False,
        timeout: bool = False,
    ) -> None:
        if reason_code is None:
            reason_code = next((c for c in reason_codes if c >= 0x80), None)
        super().__init__(message, reason_code=reason_code, temporary=temporary, timeout=timeout)
        self.reason_codes = reason_codes


class PublishError(ClientError):
    """PUBACK/PUBREC carried a failure code, the offline buffer is full, or it timed out."""

    category = ErrorCategory.PUBLISH


class ConfigurationError(ClientError, ValueError):
    """Invalid options or an illegal packet; fix the caller. Never temporary."""

    category = ErrorCategory.CONFIGURATION


class StorageError(ClientError):
    """The session store could not load or save state."""

    category = ErrorCategory.STORAGE


class ForwarderError(ClientError):
    category = ErrorCategory.FORWARDER


# CONNACK codes that mean "who you are" rather than "not now".
_AUTH_CODES = frozenset(
    {
        ReasonCode.BAD_USER_NAME_OR_PASSWORD,
        ReasonCode.NOT_AUTHORIZED,
        ReasonCode.BANNED,
        ReasonCode.BAD_AUTHENTICATION_METHOD,
    }
)
# Codes after which the same request may well succeed later.
TEMPORARY_CODES = frozenset(
    {
        ReasonCode.SERVER_UNAVAILABLE,
        ReasonCode.SERVER_BUSY,
        ReasonCode.SERVER_SHUTTING_DOWN,
        ReasonCode.USE_ANOTHER_SERVER,
        ReasonCode.SERVER_MOVED,
        ReasonCode.CONNECTION_RATE_EXCEEDED,
        ReasonCode.QUOTA_EXCEEDED,
        ReasonCode.MESSAGE_RATE_TOO_HIGH,
        ReasonCode.KEEP_ALIVE_TIMEOUT,
        ReasonCode.SESSION_TAKEN_OVER,
        ReasonCode.ADMINISTRATIVE_ACTION,
        ReasonCode.MAXIMUM_CONNECT_TIME,
        ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR,
        ReasonCode.UNSPECIFIED_ERROR,
    }
)


def reason_name(code: int, packet: PacketType) -> str:
    """The specification's name of *code* in *packet* (``"0x97"`` when unknown)."""
    return REASON_CODE_NAMES.get((code, packet), f"0x{code:02x}")


def connack_error(code: int, reason_string: str | None = None) -> MQTTConnectionError:
    """The typed error for a failing CONNACK *code*."""
    text = f"connection refused: {reason_name(code, PacketType.CONNACK)}"
    if reason_string:
        text += f": {reason_string}"
    if code in _AUTH_CODES:
        return AuthenticationError(text, reason_code=code)
    return MQTTConnectionError(text, reason_code=code, temporary=code in TEMPORARY_CODES)
