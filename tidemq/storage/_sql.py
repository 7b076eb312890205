"""Row conversions shared by the SQL backends (``sqlite``, ``postgres``, ``mysql``).

Each record type maps to one table with the same columns in every dialect; this module
turns records into parameter tuples in that column order and rows back into records. The
SQL text itself (types, upserts, placeholders) lives in each backend. ``postgres`` and
``mysql`` also key rows by ``key_hash`` of the client id and topic, because a btree key
cannot hold a 64 KiB client id or topic there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final

from tidemq.storage.api import (
    AclRuleRecord,
    BanRecord,
    IncomingQos2Record,
    InflightRecord,
    MessageRecord,
    QueuedRecord,
    RetainedRecord,
    SessionRecord,
    SubscriptionRecord,
    UserRecord,
    WillRecord,
)

#: The schema version the SQL backends write; each keeps its own migrations up to it.
SCHEMA_VERSION: Final = 3

# Column lists, in the order of the *_params functions below.
SESSION_COLUMNS: Final = (
    "client_id, expiry_interval, protocol_version, username, disconnected_at, expires_at, "
    "will_topic, will_payload, will_qos, will_retain, will_properties, will_delay"
)
SUBSCRIPTION_COLUMNS: Final = (
    "client_id, topic_filter, qos, no_local, retain_as_published, retain_handling, "
    "subscription_id, share_group"
)
MESSAGE_COLUMNS: Final = (
    "message_id, topic, payload, qos, retain, properties, sender, created_at, expires_at"
)
QUEUE_COLUMNS: Final = "client_id, seq, message_id, qos, retain, sub_ids"
INFLIGHT_COLUMNS: Final = "client_id, packet_id, message_id, qos, retain, sub_ids, released, seq"
INCOMING_COLUMNS: Final = "client_id, packet_id, received_at"
RETAINED_COLUMNS: Final = "topic, payload, qos, properties, sender, created_at, expires_at"
# Schema version 2. Column names avoid SQL keywords (BY, VALUE, UNTIL) in every dialect.
USER_COLUMNS: Final = "username, password_hash, superuser, created_at, updated_at"
BAN_COLUMNS: Final = "ban_kind, ban_value, reason, created_at, expires_at, banned_by"
# Schema version 3: built-in ACL rules, after their rule_id (given by the database).
ACL_COLUMNS: Final = "who_kind, who, permission, acl_action, topic, qos_levels, retain, created_at"

Row = Sequence[Any]


def key_hash(text: str) -> bytes:
    """The fixed-size key of a client id or topic (SHA-256 of its UTF-8)."""
    return hashlib.sha256(text.encode()).digest()


def encode_sub_ids(sub_ids: tuple[int, ...]) -> str:
    return ",".join(map(str, sub_ids))


def decode_sub_ids(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",")) if text else ()


def session_params(r: SessionRecord) -> tuple[Any, ...]:
    will = r.will
    if will is None:
        return (
            r.client_id, r.expiry_interval, r.protocol_version, r.username,
            r.disconnected_at, r.expires_at, None, None, None, None, None, None,
        )  # fmt: skip
    return (
        r.client_id, r.expiry_interval, r.protocol_version, r.username, r.disconnected_at,
        r.expires_at, will.topic, will.payload, will.qos, will.retain, will.properties,
        will.delay,
    )  # fmt: skip


def session_from_row(row: Row) -> SessionRecord:
    will = None
    if row[6] is not None:
        will = WillRecord(
            topic=row[6],
            payload=bytes(row[7]),
            qos=row[8],
            retain=bool(row[9]),
            properties=bytes(row[10]),
            delay=row[11],
        )
    return SessionRecord(
        client_id=row[0],
        expiry_interval=row[1],
        protocol_version=row[2],
        username=row[3],
        disconnected_at=row[4],
        expires_at=row[5],
        will=will,
    )


def subscription_params(r: SubscriptionRecord) -> tuple[Any, ...]:
    return (
        r.client_id, r.topic_filter, r.qos, r.no_local, r.retain_as_published,
        int(r.retain_handling), r.subscription_id, r.share_group,
    )  # fmt: skip


def subscription_from_row(row: Row) -> SubscriptionRecord:
    return SubscriptionRecord(
        client_id=row[0],
        topic_filter=row[1],
        qos=row[2],
        no_local=bool(row[3]),
        retain_as_published=bool(row[4]),
        retain_handling=row[5],
        subscription_id=row[6],
        share_group=row[7],
    )


def message_params(r: MessageRecord) -> tuple[Any, ...]:
    return (
        r.message_id, r.topic, r.payload, r.qos, r.retain, r.properties, r.sender,
        r.created_at, r.expires_at,
    )  # fmt: skip


def message_from_row(row: Row) -> MessageRecord:
    return MessageRecord(
        message_id=row[0],
        topic=row[1],
        payload=bytes(row[2]),
        qos=row[3],
        retain=bool(row[4]),
        properties=bytes(row[5]),
        sender=row[6],
        created_at=row[7],
        expires_at=row[8],
    )


def queued_params(r: QueuedRecord) -> tuple[Any, ...]:
    return (r.client_id, r.seq, r.message_id, r.qos, r.retain, encode_sub_ids(r.sub_ids))


def queued_from_row(row: Row) -> QueuedRecord:
    return QueuedRecord(
        client_id=row[0],
        seq=row[1],
        message_id=row[2],
        qos=row[3],
        retain=bool(row[4]),
        sub_ids=decode_sub_ids(row[5]),
    )


def inflight_params(r: InflightRecord) -> tuple[Any, ...]:
    return (
        r.client_id, r.packet_id, r.message_id, r.qos, r.retain, encode_sub_ids(r.sub_ids),
        r.released, r.seq,
    )  # fmt: skip


def inflight_from_row(row: Row) -> InflightRecord:
    return InflightRecord(
        client_id=row[0],
        packet_id=row[1],
        message_id=row[2],
        qos=row[3],
        retain=bool(row[4]),
        sub_ids=decode_sub_ids(row[5]),
        released=bool(row[6]),
        seq=row[7],
    )


def incoming_params(r: IncomingQos2Record) -> tuple[Any, ...]:
    return (r.client_id, r.packet_id, r.received_at)


def incoming_from_row(row: Row) -> IncomingQos2Record:
    return IncomingQos2Record(client_id=row[0], packet_id=row[1], received_at=row[2])


def retained_params(r: RetainedRecord) -> tuple[Any, ...]:
    return (r.topic, r.payload, r.qos, r.properties, r.sender, r.created_at, r.expires_at)


def retained_from_row(row: Row) -> RetainedRecord:
    return RetainedRecord(
        topic=row[0],
        payload=bytes(row[1]),
        qos=row[2],
        properties=bytes(row[3]),
        sender=row[4],
        created_at=row[5],
        expires_at=row[6],
    )


def user_params(r: UserRecord) -> tuple[Any, ...]:
    return (r.username, r.password_hash, r.superuser, r.created_at, r.updated_at)


def user_from_row(row: Row) -> UserRecord:
    return UserRecord(
        username=row[0],
        password_hash=row[1],
        superuser=bool(row[2]),
        created_at=row[3],
        updated_at=row[4],
    )


def ban_params(r: BanRecord) -> tuple[Any, ...]:
    return (r.kind, r.value, r.reason, r.created_at, r.until, r.by)


def ban_from_row(row: Row) -> BanRecord:
    return BanRecord(
        kind=row[0],
        value=row[1],
        reason=row[2],
        created_at=row[3],
        until=row[4],
        by=row[5],
    )


def acl_params(r: AclRuleRecord) -> tuple[Any, ...]:
    """The ``ACL_COLUMNS`` values (the rule id is the database's)."""
    return (
        r.who_kind, r.who, r.permission, r.action, r.topic, encode_sub_ids(r.qos), r.retain,
        r.created_at,
    )  # fmt: skip


def acl_from_row(row: Row) -> AclRuleRecord:
    """A rule from ``rule_id, <ACL_COLUMNS>``."""
    return AclRuleRecord(
        rule_id=int(row[0]),
        who_kind=row[1],
        who=row[2],
        permission=row[3],
        action=row[4],
        topic=row[5],
        qos=decode_sub_ids(row[6]),
        retain=None if row[7] is None else bool(row[7]),
        created_at=row[8],
    )
