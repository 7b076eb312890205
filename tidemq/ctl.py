"""``tidemq ctl``: manage built-in users, ACL rules and bans in the configured storage.

Part of the command line (``tidemq.cli`` dispatches here). It opens the storage that
``[storage]`` names, resolved exactly as ``tidemq serve`` resolves it (``--config``,
``TIDEMQ_CONFIG``, ``TIDEMQ_*`` variables, ``--data-dir``, ``--set``), in shared mode, so
it works while the broker runs on the same data directory (SQLite in WAL mode lets a
second process read and write beside the broker). A running broker sees the changes
within ``auth.builtin.cache_ttl`` seconds (users), ``acl.builtin.cache_ttl`` plus
``acl.cache_ttl`` seconds (ACL rules) and ``bans.refresh_interval`` seconds (bans).

::

    tidemq ctl users add alice [--password P] [--superuser] [--algorithm argon2id]
    tidemq ctl users passwd alice [--password P]
    tidemq ctl users set alice --superuser | --no-superuser
    tidemq ctl users delete alice
    tidemq ctl users list
    tidemq ctl acl add (--username U | --clientid C | --all) allow|deny \
        publish|subscribe|all TOPIC [--qos 0,1] [--retain true|false]
    tidemq ctl acl list [--username U | --clientid C | --all]
    tidemq ctl acl delete ID [ID ...]
    tidemq ctl ban add clientid|username|address VALUE [--duration 1h] [--reason TEXT]
    tidemq ctl ban delete clientid|username|address VALUE
    tidemq ctl ban list

Without ``--password``, the password is asked twice on a terminal, or read as one line
from standard input otherwise (``echo secret | tidemq ctl users add alice``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import re
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from tidemq.config import Config, ConfigError, add_arguments, load_config, overrides_from_args

__all__ = ["add_ctl_commands", "ctl_main", "parse_duration"]

# Exit codes: 0 done, 1 failed (storage, a missing user...), 2 bad usage or config.
EXIT_FAILED = 1
EXIT_USAGE = 2

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")


class CtlError(Exception):
    """A failure to report as ``tidemq ctl: <message>``."""


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``1h``, ``2d``, ``1w`` or a sum (``1h30m``).

    Raises:
        ValueError: not a positive duration.
    """
    compact = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(compact):
        match = _DURATION.match(compact, pos)
        if match is None:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not compact or pos != len(compact) or total <= 0:
        raise ValueError(f"bad duration {text!r}: use e.g. 90s, 15m, 1h, 2d, 1w or 1h30m")
    return total


def add_ctl_commands(ctl: argparse.ArgumentParser) -> None:
    """The ``users``, ``acl`` and ``ban`` sub-commands of ``tidemq ctl``."""
    from tidemq.auth.passwords import ALGORITHMS, DEFAULT_ALGORITHM

    groups = ctl.add_subparsers(dest="ctl_group", required=True, metavar="GROUP")
    users = groups.add_parser("users", help="built-in users (auth source `builtin`)")
    actions = users.add_subparsers(dest="ctl_action", required=True, metavar="ACTION")

    def leaf(parent: Any, name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(name, help=text, description=text)
        return parser

    p = leaf(actions, "list", "list the users")
    add_arguments(p)
    p = leaf(actions, "add", "add a user")
    p.add_argument("username")
    p.add_argument("--password", help="the password (default: asked, or read from stdin)")
    p.add_argument("--superuser", action="store_true", help="bypasses authorization")
    p.add_argument("--algorithm", choices=ALGORITHMS, default=DEFAULT_ALGORITHM)
    add_arguments(p)
    p = leaf(actions, "passwd", "change a user's password")
    p.add_argument("username")
    p.add_argument("--password", help="the password (default: asked, or read from stdin)")
    p.add_argument("--algorithm", choices=ALGORITHMS, default=DEFAULT_ALGORITHM)
    add_arguments(p)
    p = leaf(actions, "set", "change a user's superuser flag")
    p.add_argument("username")
    flag = p.add_mutually_exclusive_group(required=True)
    flag.add_argument("--superuser", dest="superuser", action="store_true")
    flag.add_argument("--no-superuser", dest="superuser", action="store_false")
    add_arguments(p)
    p = leaf(actions, "delete", "delete a user")
    p.add_argument("username")
    add_arguments(p)

    acl = groups.add_parser("acl", help="built-in ACL rules (ACL source `builtin`)")
    actions = acl.add_subparsers(dest="ctl_action", required=True, metavar="ACTION")

    def who(parser: argparse.ArgumentParser, required: bool) -> None:
        group = parser.add_mutually_exclusive_group(required=required)
        group.add_argument("--username", metavar="U", help="the rules of one username")
        group.add_argument("--clientid", metavar="C", help="the rules of one client id")
        group.add_argument("--all", action="store_true", help="the rules for every client")

    p = leaf(
        actions,
        "list",
        "list rules with their ids: all of them in the order added, or one list",
    )
    who(p, required=False)
    add_arguments(p)
    p = leaf(actions, "add", "add a rule after the others of its list")
    who(p, required=True)
    p.add_argument("permission", choices=("allow", "deny"))
    p.add_argument("action", choices=("publish", "subscribe", "all"))
    p.add_argument(
        "topic",
        help="a topic filter; ${username} and ${clientid} are filled in; "
        "'eq FILTER' compares literally",
    )
    p.add_argument("--qos", help="only for these QoS levels, e.g. 0,1 (default: any)")
    p.add_argument(
        "--retain",
        choices=("true", "false"),
        help="publish rules only: only for messages with this retain flag (default: any)",
    )
    add_arguments(p)
    p = leaf(actions, "delete", "delete rules by the ids `acl list` shows")
    p.add_argument("rule_ids", metavar="ID", type=int, nargs="+")
    add_arguments(p)

    ban = groups.add_parser("ban", help="bans by client id, username or address")
    actions = ban.add_subparsers(dest="ctl_action", required=True, metavar="ACTION")
    p = leaf(actions, "list", "list the bans")
    add_arguments(p)
    p = leaf(actions, "add", "ban a client id, a username or an address (IP or CIDR)")
    p.add_argument("kind", choices=("clientid", "username", "address"))
    p.add_argument("value")
    p.add_argument("--duration", help="e.g. 30m, 1h, 7d (default: forever)")
    p.add_argument("--reason", default="", help="shown in `ban list` and the broker's log")
    add_arguments(p)
    p = leaf(actions, "delete", "lift a ban")
    p.add_argument("kind", choices=("clientid", "username", "address"))
    p.add_argument("value")
    add_arguments(p)


def ctl_main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run one ``tidemq ctl`` command; returns the exit code."""
    out = out or sys.stdout
    try:
        config = load_config(args.config, overrides=overrides_from_args(args))
    except ConfigError as exc:
        sys.stderr.write(f"tidemq ctl: {exc}\n")
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = _COMMANDS[(args.ctl_group, args.ctl_action)]
    try:
        if args.ctl_group == "users" and args.ctl_action in ("add", "passwd"):
            args.password = _password(args)  # asked before storage is opened
        return asyncio.run(_run(config, lambda storage: command(storage, args, out)))
    except CtlError as exc:
        sys.stderr.write(f"tidemq ctl: {exc}\n")
        return EXIT_FAILED
    except (ValueError, KeyboardInterrupt) as exc:
        sys.stderr.write(f"tidemq ctl: {exc or 'interrupted'}\n")
        return EXIT_USAGE


async def _run(config: Config, command: Callable[[Any], Awaitable[int]]) -> int:
    from tidemq.storage import open_storage
    from tidemq.storage.api import StorageError

    section = config.storage
    if section.backend == "memory":
        raise CtlError(
            "storage.backend is memory: there is nothing to manage (built-in users, ACL "
            "rules and bans need a persistent backend such as sqlite)"
        )
    try:
        storage = await open_storage(
            section.backend,
            section.url,
            config.node.data_dir,
            section.durability,
            shared=True,
        )
    except StorageError as exc:
        raise CtlError(f"cannot open storage ({section.backend}): {exc}") from exc
    try:
        return await command(storage)
    except StorageError as exc:
        raise CtlError(f"storage ({section.backend}): {exc}") from exc
    finally:
        await storage.close()


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        password: str = args.password
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Reenter password: ") != password:
            raise ValueError("the passwords do not match")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise ValueError("the password is empty")
    return password


def _when(wall: float | None) -> str:
    if wall is None:
        return "forever"
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- users ----------------------------------------------------------------------------------


async def _users_list(storage: Any, args: argparse.Namespace, out: TextIO) -> int:
    users = await storage.list_users()
    for user in users:
        flag = "superuser" if user.superuser else "-"
        out.write(f"{user.username}\t{flag}\t{_when(user.created_at)}\n")
    return 0


async def _users_add(storage: Any, args: argparse.Namespace, out: TextIO) -> int:
    from tidemq.auth.passwords import hash_password
    from tidemq.storage.api import UserRecord

    if await storage.get_user(args.username) is not None:
        raise CtlError(f"user {args.username!r} exists (use `users passwd` or `users set`)")
    record = UserRecord(
        username=args.username,
        password_hash=hash_password(args.password, args.algorithm),
        superuser=args.superuser,
        created_at=time.time(),
    )
    await storage.put_user(record)
    out.write(f"added user {args.username}{' (superuser)' if args.superuser else ''}\n")
    return 0


async def _users_passwd(storage: Any, args: argparse.Namespace, out: TextIO) -> int:
    from dataclasses import replace

    from tidemq.auth.passwords import hash_password

    user = await storage.get_user(args.username)
    if user is None:
        raise CtlError(f"no user {args.username!r}")
    new_hash = hash_password(args.password, args.algorithm)
    await storage.put_user(replace(user, password_hash=new_hash, updated_at=time.time()))
    out.write(f"changed the password of {args.username}\n")
    return 0


async def _users_set(storage: Any, args: argparse.Namespace, out: TextIO) -> int:
    from dataclasses import replace

    user = await storage.get_user(args.username)
    if user is None:
        raise CtlError(f"no user {args.username!r}")
    await storage.put_user(replace(user, superuser=args.superuser, updated_at=time.time()))
    out.write(f"{args.username} is {'now' if args.superuser else 'no longer'} a superuser\n")
    return 0


async def _users_delete(storage: Any, args: argparse.Namespace, out: TextIO) -> int:
    if not await storage.delete_user(args.username):
        raise CtlError(f"no user {args.username!r}")
    out.write(f"deleted user {args.username}\n")
    return 0


# --- ACL rules ------------------------------------------------------------------------------


def _acl_who(args: argparse.Namespace) -> tuple[str, str] | None:
    if args.username is not None:
        return "username", args.username
    if args.clientid is not None:
        return "clientid", args.clientid
    if args.all:
        return "all", ""
    return None


def _parse_qos(text: str) -> tuple[int, ...]:
    try:
        levels = {int(q) for q in text.replace(" ", "").split(",") if q}
    except ValueError:
        levels = set()
    if not levels or not levels <= {0, 1, 2}:
        raise ValueError(f"bad --qos {text!r}: QoS levels 0, 1, 2, comma-separated (0,1)")
    return tuple(sorted(levels))


def _acl_line(rule: Any) -> str:
    who = "all" if rule.who_kind == "all" else f"{rule.who_kind} {rule.who}"
    conditions = []
    if rule.qos:
        conditions.append("qos=" + ",".join(map(str, rule.qos)))
    if rule.retain is not None:
        conditions.append(f"retain={'true' if rule.retain else 'false'}")
    return (
        f"{rule.rule_id}\t{who}\t{rule.permission}\t{rule.action}\t{rule.topic}\t"
        f"{' '.join(conditions) or '-'}\n"
    )


async def _acl_list(storage: Any, args: argparse.Namespace, out: TextIO) -> int:
    who = _acl_who(args)
    rules = await (storage.list_acl_rules() if who is None else storage.list_acl_rules(*who))
    for rule in rules:
        out.write(_acl_line(rule))
    return 0


async def _acl_add(storage: Any, args: argparse.Namespace, out: TextIO) -> int:
    from tidemq.auth.builtin import acl_rule
    from tidemq.storage.api import AclRuleRecord

    who = _acl_who(args)
    assert who is not None  # argparse requires one
    record = AclRuleRecord(
        who_kind=who[0],  # type: ignore[arg-type]
        who=who[1],
        permission=args.permission,
        action=args.action,
        topic=args.topic,
        qos=() if args.qos is None else _parse_qos(args.qos),
        retain=None if args.retain is None else args.retain == "true",
        created_at=time.time(),
    )
    acl_rule(record)  # checked as the broker will read it: AclError is a ValueError
    stored = await storage.add_acl_rule(record)
    out.write("added rule " + _acl_line(stored).replace("\t", " "))
    return 0


async def _acl_delete(storage: Any, args: argparse.Namespace, out: TextIO) -> int:
    missing = []
    for rule_id in args.rule_ids:
        if await storage.delete_acl_rule(rule_id):
            out.write(f"deleted rule {rule_id}\n")
        else:
            missing.append(str(rule_id))
    if missing:
        raise CtlError(f"no ACL rule {', '.join(missing)}")
    return 0


# --- bans -----------------------------------------------------------------------------------


async def _ban_list(storage: Any, args: argparse.Namespace, out: TextIO) -> int:
    now = time.time()
    for ban in await storage.list_bans():
        if ban.until is not None and ban.until <= now:
            continue  # expired, awaiting the purge
        out.write(
            f"{ban.kind}\t{ban.value}\tuntil {_when(ban.until)}\tby {ban.by or '-'}\t{ban.reason}\n"
        )
    return 0


async def _ban_add(storage: Any, args: argparse.Namespace, out: TextIO) -> int:
    from tidemq.auth.bans import normalize_ban_value
    from tidemq.storage.api import BanRecord

    value = normalize_ban_value(args.kind, args.value)
    now = time.time()
    until = None if args.duration is None else now + parse_duration(args.duration)
    record = BanRecord(
        kind=args.kind, value=value, reason=args.reason, created_at=now, until=until, by="ctl"
    )
    await storage.put_ban(record)
    out.write(f"banned {args.kind} {value} until {_when(until)}\n")
    return 0


async def _ban_delete(storage: Any, args: argparse.Namespace, out: TextIO) -> int:
    from tidemq.auth.bans import normalize_ban_value

    value = normalize_ban_value(args.kind, args.value)
    if not await storage.delete_ban(args.kind, value):
        raise CtlError(f"no ban of {args.kind} {value}")
    out.write(f"lifted the ban of {args.kind} {value}\n")
    return 0


_COMMANDS: dict[tuple[str, str], Callable[[Any, argparse.Namespace, TextIO], Awaitable[int]]] = {
    ("users", "list"): _users_list,
    ("users", "add"): _users_add,
    ("users", "passwd"): _users_passwd,
    ("users", "set"): _users_set,
    ("users", "delete"): _users_delete,
    ("acl", "list"): _acl_list,
    ("acl", "add"): _acl_add,
    ("acl", "delete"): _acl_delete,
    ("ban", "list"): _ban_list,
    ("ban", "add"): _ban_add,
    ("ban", "delete"): _ban_delete,
}
