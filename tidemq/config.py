"""The typed configuration tree: one TOML file, environment variables, command-line flags.

Every setting lives in a frozen dataclass section (``Config.node``, ``Config.limits``, ...).
``load_config`` builds a ``Config`` from, in increasing order of precedence:

1. the TOML file (``path``, or the file named by ``TIDEMQ_CONFIG`` when ``path`` is None);
2. environment variables ``TIDEMQ_<SECTION>_<KEY>`` (``TIDEMQ_LIMITS_MAX_PACKET_SIZE=2048``);
3. overrides, normally from the command line (``--limits.max-packet-size 2048``,
   ``--set limits.max_packet_size=2048``, ``--listen URL``, ``--data-dir DIR``).

Unknown sections and keys are errors (typos must not be silent), and so are values of the
wrong type or outside their range; a ``ConfigError`` names the key and where the value came
from. Every field carries its help text in ``field(metadata=...)``, from which
``render_markdown`` generates ``docs/config.md`` and ``example_toml`` generates
``tidemq/default.toml``::

    python -m tidemq.config --markdown > docs/config.md
    python -m tidemq.config --example > tidemq/default.toml
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import socket
import sys
import textwrap
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, get_args, get_origin, get_type_hints
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "ENV_CONFIG_FILE",
    "ENV_PREFIX",
    "AclConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "LimitsConfig",
    "ListenURL",
    "ListenerConfig",
    "ListenersConfig",
    "LogConfig",
    "MQTTConfig",
    "NodeConfig",
    "StorageConfig",
    "TLSConfig",
    "WebSocketConfig",
    "add_arguments",
    "example_toml",
    "load_config",
    "main",
    "overrides_from_args",
    "parse_listen_url",
    "render_markdown",
    "to_toml",
]

ENV_PREFIX: Final = "TIDEMQ_"
#: Names the TOML file to read when ``load_config`` gets no path.
ENV_CONFIG_FILE: Final = "TIDEMQ_CONFIG"
#: ``TIDEMQ_*`` variables left alone besides ``TIDEMQ_CONFIG``: the test suite's own.
_ENV_RESERVED_PREFIXES: Final = ("TIDEMQ_TEST_",)
#: Build switches (setup.py; README, "Speed-ups"), not configuration: ``TIDEMQ_MYPYC`` and
#: ``TIDEMQ_NO_EXTENSIONS`` (which also turns the C WebSocket scanner off at run time).
_ENV_NOT_CONFIG: Final = frozenset({"TIDEMQ_MYPYC", "TIDEMQ_NO_EXTENSIONS"})

U32_MAX: Final = 0xFFFF_FFFF
U16_MAX: Final = 0xFFFF
# The largest packet MQTT can frame: 1 byte type + 4 bytes remaining length + 268435455
# (tidemq.protocol.codec.PROTOCOL_MAX_PACKET_SIZE; config stays free of protocol imports).
_PROTOCOL_MAX_PACKET_SIZE: Final = 268_435_460

ListenScheme = Literal["tcp", "tls", "ws", "wss"]
ShareStrategy = Literal["round_robin", "random", "sticky", "hash_clientid"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["text", "json"]
CertIdentity = Literal["none", "cn", "dn"]
# The storage.api names, repeated because config stays free of broker imports.
StorageBackend = Literal["sqlite", "memory", "redis", "postgres", "mysql"]
StorageDurability = Literal["sync", "batch", "none"]
TLSVersion = Literal["1.2", "1.3"]

_LISTEN_SCHEMES: Final[tuple[str, ...]] = get_args(ListenScheme)
_TLS_SCHEMES: Final = ("tls", "wss")
_WS_SCHEMES: Final = ("ws", "wss")


class ConfigError(ValueError):
    """A configuration file, variable or flag that cannot be used.

    Attributes:
        key: the dotted key (``limits.max_packet_size``) or section, when one is to blame.
        source: where the value came from (``config file x.toml``, ``environment variable
            TIDEMQ_LIMITS_MAX_PACKET_SIZE``, ...), when known.
    """

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        self.message = message
        self.key = key
        self.source = source
        text = f"{key}: {message}" if key else message
        super().__init__(f"{text} (from {source})" if source else text)


class _Invalid(Exception):
    """A value check failed; the caller adds the key and the source."""


# --- field declarations -------------------------------------------------------------------


def _doc(
    text: str,
    *,
    precedent: str = "",
    unit: str = "",
    lo: float | None = None,
    hi: float | None = None,
    gt: float | None = None,
    check: Callable[[Any], str | None] | None = None,
    doc_default: str | None = None,
    example: str = "",
) -> dict[str, Any]:
    """A config field's metadata: help text, the precedent for its default (Mosquitto,
    EMQX), its unit and constraints (inclusive ``lo``/``hi``, exclusive ``gt``, a ``check``
    returning an error message or None). ``doc_default`` stands for a default computed at
    run time; ``example`` is extra commented text after the key in the example TOML."""
    return {
        "help": text,
        "precedent": precedent,
        "unit": unit,
        "min": lo,
        "max": hi,
        "gt": gt,
        "check": check,
        "doc_default": doc_default,
        "example": example,
    }


# --- value checks -------------------------------------------------------------------------


class ListenURL(NamedTuple):
    """A parsed listener URL: ``tcp://0.0.0.0:1883``, ``ws://[::]:8083/mqtt``,
    ``tls://0.0.0.0:8884?name=devices&require_client_cert=true``.

    ``options`` holds the query's per-listener options, typed and checked, in order."""

    scheme: str
    host: str
    port: int
    path: str
    options: tuple[tuple[str, object], ...] = ()


def parse_listen_url(url: str) -> ListenURL:
    """Split a listener URL into scheme, host, port, path (``ws``/``wss`` only) and the
    per-listener options of its query (see ``ListenersConfig``).

    Raises:
        ValueError: unknown scheme, missing host or port, a path on ``tcp``/``tls``, or
            an unknown or bad option in the query.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad listener URL {url!r}: {exc}") from None
    if parts.scheme not in _LISTEN_SCHEMES:
        known = ", ".join(f"{s}://" for s in _LISTEN_SCHEMES)
        raise ValueError(f"bad listener URL {url!r}: the scheme must be one of {known}")
    if not parts.hostname:
        raise ValueError(f"bad listener URL {url!r}: no host (use 0.0.0.0 or [::] for all)")
    if port is None:
        raise ValueError(f"bad listener URL {url!r}: no port, e.g. {parts.scheme}://HOST:1883")
    if parts.fragment or parts.username or parts.password:
        raise ValueError(
            f"bad listener URL {url!r}: only scheme, host, port, path and ?options allowed"
        )
    if parts.path not in ("", "/") and parts.scheme in ("tcp", "tls"):
        raise ValueError(f"bad listener URL {url!r}: a path is only allowed for ws:// and wss://")
    options = _listen_options(url, parts.scheme, parts.query) if parts.query else ()
    return ListenURL(parts.scheme, parts.hostname, port, parts.path, options)


def _option_keys(scheme: str) -> dict[str, _Key]:
    """The keys a listener URL of *scheme* may set in its query."""
    keys = {name: spec for name, spec in _KEYS["listeners"].items() if name != "listen"}
    if scheme in _TLS_SCHEMES:
        keys.update(_KEYS["listeners.tls"])
    if scheme in _WS_SCHEMES:
        keys.update(_KEYS["listeners.ws"])
    return keys


def _listen_options(url: str, scheme: str, query: str) -> tuple[tuple[str, object], ...]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ValueError(f"bad listener URL {url!r}: the query must be KEY=VALUE&...") from None
    keys = _option_keys(scheme)
    given: dict[str, list[str]] = {}
    for key, value in pairs:
        if key != "name" and key not in keys:
            known = ", ".join(["name", *keys])
            raise ValueError(
                f"bad listener URL {url!r}: unknown option {key!r}; a {scheme}:// listener "
                f"takes {known}{_suggest(key, ['name', *keys])}"
            )
        given.setdefault(key, []).append(value)
    out: list[tuple[str, object]] = []
    for key, values in given.items():
        if key == "name":
            if len(values) != 1 or _check_name(values[0]):
                raise ValueError(f"bad listener URL {url!r}: name must be one word, once")
            out.append((key, values[0]))
            continue
        spec = keys[key]
        try:
            if spec.kind == "list":
                typed: object = tuple(v for v in values if v)
            elif len(values) != 1:
                raise _Invalid("given more than once")
            else:
                typed = _convert(spec, values[0], from_string=True)
            _validate(spec, typed)
        except _Invalid as exc:
            raise ValueError(f"bad listener URL {url!r}: option {key}: {exc}") from None
        out.append((key, typed))
    return tuple(out)


def _check_listen(urls: tuple[str, ...]) -> str | None:
    if not urls:
        return "needs at least one listener URL"
    seen: dict[tuple[str, int], str] = {}
    names: set[str] = set()
    for url in urls:
        try:
            parsed = parse_listen_url(url)
        except ValueError as exc:
            return str(exc)
        address = (parsed.host, parsed.port)
        if address in seen and parsed.port != 0:
            if seen[address] == url:
                return f"listener URL {url!r} is given twice"
            return f"listener URLs {seen[address]!r} and {url!r} use the same address"
        seen[address] = url
        name = dict(parsed.options).get("name")
        if isinstance(name, str):
            if name in names:
                return f"listener name {name!r} is given twice"
            names.add(name)
    return None


def _check_name(name: str) -> str | None:
    if not name or any(c.isspace() or not c.isprintable() for c in name):
        return f"must be a non-empty name without spaces, got {name!r}"
    return None


def _check_non_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def _default_node_name() -> str:
    return "tidemq@" + (socket.gethostname() or "localhost")


# --- sections -----------------------------------------------------------------------------


class _Section:
    """Shared by the section dataclasses: values are normalised and checked on creation,
    also by ``dataclasses.replace``."""

    __slots__ = ()

    def __post_init__(self) -> None:
        _check_section(self)


@dataclass(frozen=True, slots=True)
class NodeConfig(_Section):
    """This broker node: its name and where it keeps its files."""

    name: str = field(
        default_factory=_default_node_name,
        metadata=_doc(
            "Name of this node, shown in `$SYS` topics and logs and used to tell cluster "
            "members apart. The default is `tidemq@` and the host name.",
            doc_default="tidemq@<hostname>",
            precedent="EMQX node.name emqx@127.0.0.1.",
            check=_check_name,
        ),
    )
    data_dir: str = field(
        default="./data",
        metadata=_doc(
            "Directory for the broker's files (such as the SQLite store). A relative path is "
            "relative to the working directory.",
            precedent="EMQX node.data_dir data.",
            check=_check_non_empty,
        ),
    )
    gc_threshold: int = field(
        default=20_000,
        metadata=_doc(
            "Allocations between two collections of Python's youngest garbage-collector "
            "generation in `tidemq serve`, which also freezes the objects built at start-up "
            "out of later collections. Every decoded packet and routed message is such an "
            "allocation, so Python's default (700) runs a collection every few hundred "
            "messages; 20,000 gave about 4 % more fan-in throughput in bench/websocket.py. "
            "0 = leave Python's settings alone.",
            precedent="EMQX node.global_gc_interval 15m tunes the Erlang VM's collector; "
            "Mosquitto (C) has none.",
            lo=0,
        ),
    )


@dataclass(frozen=True, slots=True)
class TLSConfig(_Section):
    """TLS for `tls://` and `wss://` listeners. A listener can override any of these keys in
    its URL query (`tls://0.0.0.0:8884?cafile=/etc/tidemq/ca.pem&require_client_cert=true`).
    The files are read at start and again on SIGHUP, which swaps the certificates for new
    connections without dropping established ones."""

    certfile: str = field(
        default="",
        metadata=_doc(
            "PEM file with the server certificate followed by its intermediates. Required "
            "by `tls://` and `wss://` listeners.",
            precedent="Mosquitto certfile; EMQX listeners.ssl.default.ssl_options.certfile.",
        ),
    )
    keyfile: str = field(
        default="",
        metadata=_doc(
            "PEM file with the unencrypted private key. Empty: the key is in `certfile`.",
            precedent="Mosquitto keyfile; EMQX ssl_options.keyfile.",
        ),
    )
    cafile: str = field(
        default="",
        metadata=_doc(
            "PEM bundle of the CAs that sign client certificates. When set, clients are "
            "asked for a certificate (and must present one with `require_client_cert`); "
            "empty: no client certificate is asked for.",
            precedent="Mosquitto cafile; EMQX ssl_options.cacertfile.",
        ),
    )
    require_client_cert: bool = field(
        default=False,
        metadata=_doc(
            "Refuse the TLS handshake of a client without a valid certificate signed by "
            "`cafile` (mutual TLS). Needs `cafile`.",
            precedent="Mosquitto require_certificate false; EMQX fail_if_no_peer_cert false.",
        ),
    )
    cert_as_username: CertIdentity = field(
        default="none",
        metadata=_doc(
            "Use the client certificate as the MQTT username, replacing the one in "
            "CONNECT: `cn` its subject common name, `dn` its subject distinguished name "
            "(RFC 4514, `CN=dev1,O=Acme`), `none` keeps the CONNECT username. Without a "
            "certificate the CONNECT username stays. Authentication hooks see the "
            "certificate's CN in any case. Needs `cafile`.",
            precedent="EMQX peer_cert_as_username (cn, dn, ...); Mosquitto "
            "use_identity_as_username (CN) and use_subject_as_username (DN).",
        ),
    )
    min_version: TLSVersion = field(
        default="1.2",
        metadata=_doc(
            "Lowest TLS version accepted.",
            precedent="Mosquitto tls_version and EMQX versions accept TLS 1.2 and 1.3 by default.",
        ),
    )
    ciphers: str = field(
        default="",
        metadata=_doc(
            "OpenSSL cipher list for TLS 1.2 connections (TLS 1.3 uses OpenSSL's suites). "
            "Empty: Python's secure defaults.",
            precedent="Mosquitto ciphers; EMQX ssl_options.ciphers.",
            example='e.g. ciphers = "ECDHE+AESGCM:ECDHE+CHACHA20"',
        ),
    )

    def __post_init__(self) -> None:
        _check_section(self)
        if self.require_client_cert and not self.cafile:
            raise ConfigError(
                "require_client_cert needs cafile, the CA that signs client certificates",
                key="listeners.tls.require_client_cert",
            )
        if self.cert_as_username != "none" and not self.cafile:
            raise ConfigError(
                "cert_as_username needs cafile, the CA that signs client certificates",
                key="listeners.tls.cert_as_username",
            )


@dataclass(frozen=True, slots=True)
class WebSocketConfig(_Section):
    """MQTT over WebSocket: `ws://` and `wss://` listeners. A listener can override any of
    these keys in its URL query (`ws://0.0.0.0:8083/mqtt?compression=true`; a list key is
    repeated: `?allowed_origins=https://a.example&allowed_origins=https://b.example`)."""

    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Origins (`https://app.example.com`) whose web pages may connect; a browser "
            "request from another origin is answered 403. Requests without an `Origin` "
            "header (clients that are not browsers) are accepted. Empty: any origin.",
            precedent="EMQX websocket.check_origins, off by default (check_origin_enable false).",
        ),
    )
    compression: bool = field(
        default=False,
        metadata=_doc(
            "Negotiate `permessage-deflate` with clients that offer it. It saves bandwidth "
            "on text-like payloads and costs CPU on every message.",
            precedent="EMQX websocket.compress false.",
        ),
    )
    max_frame_size: int = field(
        default=2_097_152,
        metadata=_doc(
            "Largest WebSocket frame payload accepted and, with compression, the largest "
            "decompressed message; a larger one closes the connection with code 1009. MQTT "
            "packets are still capped by `limits.max_packet_size`. 0 = unlimited.",
            precedent="EMQX websocket.max_frame_size infinity; TideMQ caps it at twice the "
            "default max_packet_size so a frame holds a largest packet.",
            unit="bytes",
            lo=0,
        ),
    )


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One listener with its effective options: the section defaults, then its URL's
    query. ``ListenersConfig.resolve`` makes them; ``tls`` and ``ws`` are None for the
    schemes that do not use them."""

    name: str
    scheme: str
    host: str
    port: int
    path: str
    max_connections: int
    proxy_protocol: bool
    handshake_timeout: float
    tls: TLSConfig | None
    ws: WebSocketConfig | None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


@dataclass(frozen=True, slots=True)
class ListenersConfig(_Section):
    """Where the broker accepts connections. `listen` lists the listeners as URLs; the other
    keys here, in [listeners.tls] and in [listeners.ws] are defaults for every listener,
    and one listener overrides them in its URL's query, together with its `name`:
    `tcp://0.0.0.0:1884?name=lb&proxy_protocol=true&max_connections=10000`. A listener is
    named `SCHEME:PORT` (`tls:8883`) unless it has a `name`; the name shows in logs and
    reaches authentication hooks."""

    listen: tuple[str, ...] = field(
        default=("tcp://0.0.0.0:1883",),
        metadata=_doc(
            "Listener URLs, one per listening socket: `tcp://HOST:PORT` (MQTT), "
            "`tls://HOST:PORT` (MQTT over TLS), `ws://HOST:PORT/PATH` and "
            "`wss://HOST:PORT/PATH` (MQTT over WebSocket, default path `/mqtt`). `tls://` "
            "and `wss://` need `listeners.tls.certfile`. Use `0.0.0.0` or `[::]` for all "
            "interfaces; port 0 picks a free port. A `?KEY=VALUE&...` query sets this "
            "listener's `name` and overrides its options. On the command line, `--listen "
            "URL` (repeatable) replaces the whole list.",
            precedent="the IANA ports Mosquitto and EMQX use: 1883 MQTT, 8883 MQTT over TLS; "
            "EMQX also 8083 WebSocket and 8084 secure WebSocket.",
            check=_check_listen,
            example="The usual four ports (tls:// and wss:// need listeners.tls.certfile):\n"
            'listen = ["tcp://0.0.0.0:1883", "tls://0.0.0.0:8883",\n'
            '          "ws://0.0.0.0:8083/mqtt", "wss://0.0.0.0:8084/mqtt"]\n'
            "A listener behind a load balancer, with its own name and options:\n"
            '"tcp://0.0.0.0:1884?name=lb&proxy_protocol=true&max_connections=10000"',
        ),
    )
    max_connections: int = field(
        default=0,
        metadata=_doc(
            "Most concurrent connections on each listener, counted from the TCP accept; "
            "more are closed at once with a log line. 0 = no per-listener cap "
            "(`limits.max_connections` still caps the total).",
            precedent="EMQX listeners.tcp.default.max_connections (infinity); Mosquitto "
            "per-listener max_connections -1 (unlimited).",
            lo=0,
        ),
    )
    proxy_protocol: bool = field(
        default=False,
        metadata=_doc(
            "Connections start with a PROXY protocol v1 or v2 header (HAProxy, AWS NLB and "
            "other load balancers), whose client address then stands for the connection "
            "in logs, hooks and ACLs. A connection without a valid header is closed. Only "
            "enable it on listeners that only the balancer can reach; usually per listener "
            "(`?proxy_protocol=true`).",
            precedent="EMQX listeners.tcp.default.proxy_protocol false.",
        ),
    )
    handshake_timeout: float = field(
        default=15.0,
        metadata=_doc(
            "Time a new connection has for its PROXY header, TLS handshake and WebSocket "
            "upgrade before it is closed; `limits.connect_timeout` follows for CONNECT.",
            precedent="EMQX listeners.ssl.default.handshake_timeout 15s.",
            unit="seconds",
            gt=0,
        ),
    )
    tls: TLSConfig = field(default_factory=TLSConfig)
    ws: WebSocketConfig = field(default_factory=WebSocketConfig)

    def __post_init__(self) -> None:
        _check_section(self)
        self.resolve()

    def resolve(self, urls: Iterable[str] | None = None) -> tuple[ListenerConfig, ...]:
        """The listeners of *urls* (default: ``listen``) with their effective options.

        Raises:
            ConfigError: a bad URL, a name used twice, a ``tls``/``wss`` listener without
                a certificate, or options that do not fit together.
        """
        out: list[ListenerConfig] = []
        names: set[str] = set()
        for url in self.listen if urls is None else urls:
            try:
                parsed = parse_listen_url(url)
            except ValueError as exc:
                raise ConfigError(str(exc), key="listeners.listen") from None
            options: dict[str, Any] = dict(parsed.options)
            name = options.pop("name", None)
            if name is not None:
                if name in names:
                    raise ConfigError(
                        f"listener name {name!r} is given twice", key="listeners.listen"
                    )
            else:
                name = base = f"{parsed.scheme}:{parsed.port}"
                n = 1
                while name in names:
                    n += 1
                    name = f"{base}-{n}"
            names.add(name)
            common = _take(options, "listeners")
            tls: TLSConfig | None = None
            ws: WebSocketConfig | None = None
            try:
                if parsed.scheme in _TLS_SCHEMES:
                    tls = dataclasses.replace(self.tls, **_take(options, "listeners.tls"))
                if parsed.scheme in _WS_SCHEMES:
                    ws = dataclasses.replace(self.ws, **_take(options, "listeners.ws"))
            except ConfigError as exc:
                raise ConfigError(f"{exc.message} (listener {url!r})", key=exc.key) from None
            if tls is not None and not tls.certfile:
                raise ConfigError(
                    f"listener {url!r} needs a certificate: set listeners.tls.certfile "
                    "(or certfile=FILE in its URL)",
                    key="listeners.tls.certfile",
                )
            out.append(
                ListenerConfig(
                    name=name,
                    scheme=parsed.scheme,
                    host=parsed.host,
                    port=parsed.port,
                    path=(parsed.path or "/mqtt") if parsed.scheme in _WS_SCHEMES else "",
                    max_connections=common.get("max_connections", self.max_connections),
                    proxy_protocol=common.get("proxy_protocol", self.proxy_protocol),
                    handshake_timeout=common.get("handshake_timeout", self.handshake_timeout),
                    tls=tls,
                    ws=ws,
                )
            )
        return tuple(out)


def _take(options: dict[str, Any], section: str) -> dict[str, Any]:
    """Remove and return the options that belong to *section*."""
    return {k: options.pop(k) for k in list(options) if k in _KEYS[section]}


@dataclass(frozen=True, slots=True)
class LimitsConfig(_Section):
    """Protocol and resource limits. Each default follows an established broker; the
    description names what Mosquitto and EMQX use."""

    max_packet_size: int = field(
        default=1_048_576,
        metadata=_doc(
            "Largest MQTT packet accepted, fixed header included; announced to MQTT 5 clients "
            "as Maximum Packet Size. A client that sends a larger packet is disconnected.",
            precedent="EMQX max_packet_size 1MB; Mosquitto max_packet_size unset, i.e. the "
            "protocol limit of 256 MB.",
            unit="bytes",
            lo=2,
            hi=_PROTOCOL_MAX_PACKET_SIZE,
        ),
    )
    max_connections: int = field(
        default=100_000,
        metadata=_doc(
            "Most concurrent client connections over all listeners; further connections are "
            "refused. 0 = unlimited.",
            precedent="EMQX (max_connections infinity) and Mosquitto (max_connections -1) "
            "default to unlimited; TideMQ caps it so a connection flood cannot exhaust memory.",
            lo=0,
        ),
    )
    max_inflight: int = field(
        default=32,
        metadata=_doc(
            "Most QoS 1/2 messages sent to one client and not yet acknowledged (the "
            "broker→client window); also the Receive Maximum announced to MQTT 5 clients.",
            precedent="EMQX max_inflight 32; Mosquitto max_inflight_messages 20.",
            lo=1,
            hi=U16_MAX,
        ),
    )
    max_queued_messages: int = field(
        default=1000,
        metadata=_doc(
            "Most messages queued for one client beyond its in-flight window (while it is "
            "offline or its window is full); beyond that, messages are dropped. 0 = unlimited.",
            precedent="EMQX max_mqueue_len 1000; Mosquitto max_queued_messages 1000.",
            lo=0,
        ),
    )
    queue_qos0: bool = field(
        default=True,
        metadata=_doc(
            "Queue QoS 0 messages for offline persistent sessions too, not only QoS 1 and 2.",
            precedent="EMQX mqueue_store_qos0 true; Mosquitto queue_qos0_messages false.",
        ),
    )
    max_topic_levels: int = field(
        default=128,
        metadata=_doc(
            "Most levels (`/`-separated parts) in a topic name or topic filter.",
            precedent="EMQX max_topic_levels 128.",
            lo=1,
            hi=U16_MAX,
        ),
    )
    max_client_id_length: int = field(
        default=65535,
        metadata=_doc(
            "Longest Client Identifier accepted, in bytes. At least 23: the protocol requires "
            "servers to accept 1 to 23 characters.",
            precedent="EMQX max_clientid_len 65535; Mosquitto 65535, but 23 for MQTT 3.1 "
            "clients as that protocol version requires.",
            unit="bytes",
            lo=23,
            hi=U16_MAX,
        ),
    )
    max_subscriptions_per_client: int = field(
        default=0,
        metadata=_doc(
            "Most subscriptions one client may hold. 0 = unlimited.",
            precedent="EMQX max_subscriptions infinity; Mosquitto has no such limit.",
            lo=0,
        ),
    )
    max_awaiting_rel: int = field(
        default=100,
        metadata=_doc(
            "Most incoming QoS 2 messages per client waiting for their PUBREL. 0 = unlimited.",
            precedent="EMQX max_awaiting_rel 100.",
            lo=0,
        ),
    )
    await_rel_timeout: float = field(
        default=300.0,
        metadata=_doc(
            "How long an incoming QoS 2 message may wait for its PUBREL before it is discarded.",
            precedent="EMQX await_rel_timeout 300s.",
            unit="seconds",
            gt=0,
        ),
    )
    max_keepalive: int = field(
        default=65535,
        metadata=_doc(
            "Largest Keep Alive a client may use; an MQTT 5 client asking for more is told "
            "this value as Server Keep Alive.",
            precedent="Mosquitto max_keepalive 65535 (the protocol maximum).",
            unit="seconds",
            lo=1,
            hi=U16_MAX,
        ),
    )
    connect_timeout: float = field(
        default=15.0,
        metadata=_doc(
            "How long a new connection may take to send its CONNECT packet before it is closed.",
            precedent="EMQX idle_timeout 15s.",
            unit="seconds",
            gt=0,
        ),
    )
    topic_alias_maximum: int = field(
        default=65535,
        metadata=_doc(
            "Highest Topic Alias an MQTT 5 client may use towards the broker, announced as "
            "Topic Alias Maximum. 0 = clients may not use topic aliases.",
            precedent="EMQX max_topic_alias 65535; Mosquitto max_topic_alias 10.",
            lo=0,
            hi=U16_MAX,
        ),
    )
    max_qos: int = field(
        default=2,
        metadata=_doc(
            "Highest QoS the broker accepts and grants; announced to MQTT 5 clients as "
            "Maximum QoS.",
            precedent="EMQX max_qos_allowed 2; Mosquitto max_qos 2.",
            lo=0,
            hi=2,
        ),
    )
    retain_available: bool = field(
        default=True,
        metadata=_doc(
            "Whether retained messages are supported (Retain Available).",
            precedent="EMQX retain_available true; Mosquitto retain_available true.",
        ),
    )
    wildcard_subscription_available: bool = field(
        default=True,
        metadata=_doc(
            "Whether topic filters may use the `+` and `#` wildcards (Wildcard Subscription "
            "Available).",
            precedent="EMQX wildcard_subscription true.",
        ),
    )
    shared_subscription_available: bool = field(
        default=True,
        metadata=_doc(
            "Whether `$share/GROUP/FILTER` shared subscriptions are supported (Shared "
            "Subscription Available).",
            precedent="EMQX shared_subscription true.",
        ),
    )
    default_session_expiry: int = field(
        default=7200,
        metadata=_doc(
            "How long a persistent (clean session = 0) MQTT 3.x session is kept after its "
            "client disconnects; MQTT 5 clients choose their own Session Expiry Interval. "
            "4294967295 = never expires. At most `max_session_expiry`.",
            precedent="EMQX session_expiry_interval 2h; Mosquitto persistent_client_expiration "
            "unset (never expires).",
            unit="seconds",
            lo=0,
            hi=U32_MAX,
        ),
    )
    max_session_expiry: int = field(
        default=U32_MAX,
        metadata=_doc(
            "Cap on the Session Expiry Interval an MQTT 5 client may request. 4294967295 (the "
            "protocol maximum) = no cap; such sessions never expire.",
            precedent="neither Mosquitto nor EMQX caps it by default.",
            unit="seconds",
            lo=0,
            hi=U32_MAX,
        ),
    )
    retry_interval: float = field(
        default=30.0,
        metadata=_doc(
            "How long before an unacknowledged QoS 1/2 message is sent again (with the DUP "
            "flag) to a connected MQTT 3.x client; MQTT 5 allows resending only on reconnect. "
            "0 = resend only on reconnect.",
            precedent="EMQX retry_interval 30s; Mosquitto 2 resends only on reconnect.",
            unit="seconds",
            lo=0,
        ),
    )
    message_expiry_max: int = field(
        default=0,
        metadata=_doc(
            "Cap on how long a message is kept for delivery (queued or retained), applied when "
            "its Message Expiry Interval is larger or absent. 0 = no cap.",
            precedent="neither Mosquitto nor EMQX caps it by default.",
            unit="seconds",
            lo=0,
            hi=U32_MAX,
        ),
    )


@dataclass(frozen=True, slots=True)
class MQTTConfig(_Section):
    """MQTT features and behaviour."""

    allow_anonymous: bool = field(
        default=True,
        metadata=_doc(
            "Accept clients that connect without a username.",
            precedent="EMQX allow_anonymous true; Mosquitto 2 false (true before 2.0).",
        ),
    )
    shared_subscription_strategy: ShareStrategy = field(
        default="round_robin",
        metadata=_doc(
            "How a shared subscription group picks the member that receives a message: "
            "`round_robin` (in turn), `random`, `sticky` (the same member until it leaves) or "
            "`hash_clientid` (by the publisher's client id).",
            precedent="EMQX shared_subscription_strategy round_robin.",
        ),
    )
    assign_topic_aliases: bool = field(
        default=True,
        metadata=_doc(
            "Let the broker assign Topic Aliases on the PUBLISH packets it sends to MQTT 5 "
            "clients that allow them (Topic Alias Maximum > 0 in CONNECT), so repeated topics "
            "cost two bytes."
        ),
    )
    reason_strings: bool = field(
        default=False,
        metadata=_doc(
            "Send MQTT 5 Reason Strings (a short human-readable cause) on refused CONNECTs, "
            "failing PUBACK/PUBREC and DISCONNECTs; acks carry one only when the client did "
            "not turn Request Problem Information off.",
            precedent="Mosquitto and EMQX send none by default.",
        ),
    )
    sys_interval: float = field(
        default=10.0,
        metadata=_doc(
            "How often the `$SYS/` broker statistics topics are updated. 0 disables `$SYS`.",
            precedent="Mosquitto sys_interval 10; EMQX sys_msg_interval 1m.",
            unit="seconds",
            lo=0,
        ),
    )


@dataclass(frozen=True, slots=True)
class LogConfig(_Section):
    """Logging."""

    level: LogLevel = field(
        default="info",
        metadata=_doc(
            "Lowest level logged. `info` shows listeners, connection refusals and protocol "
            "errors (one line each, never per message); `warning` is quieter."
        ),
    )
    format: LogFormat = field(
        default="text",
        metadata=_doc("`text`: human-readable lines; `json`: one JSON object per line."),
    )


@dataclass(frozen=True, slots=True)
class StorageConfig(_Section):
    """Where persistent sessions, offline queues, unacknowledged QoS 1/2 messages and
    retained messages are kept, and how durably (see docs/storage.md). `tidemq serve`
    restores all of it at start-up."""

    backend: StorageBackend = field(
        default="sqlite",
        metadata=_doc(
            "Storage backend: `sqlite` (one file under `node.data_dir`, no server needed), "
            "`redis`, `postgres`, `mysql` (MySQL or MariaDB), or `memory` (nothing survives "
            "a restart).",
            precedent="Mosquitto saves an in-memory snapshot every 30 minutes "
            "(autosave_interval 1800); EMQX keeps offline messages in memory unless "
            "Enterprise.",
        ),
    )
    url: str = field(
        default="",
        metadata=_doc(
            "Where the backend keeps its data; empty = the backend's default. `sqlite`: a "
            "file path relative to `node.data_dir`, or `sqlite:///absolute/path` (default "
            "`tidemq.db`). `redis`: `redis://[:PASSWORD@]HOST:PORT/DB`, with `?prefix=P` for "
            "the key prefix (default `redis://127.0.0.1:6379/0`, prefix `tidemq:`). "
            "`postgres`: `postgresql://USER:PASSWORD@HOST:PORT/DB` (default "
            "`postgresql://127.0.0.1:5432/tidemq`). `mysql`: "
            "`mysql://USER:PASSWORD@HOST:PORT/DB` (default "
            "`mysql://tidemq@127.0.0.1:3306/tidemq`). `memory` takes none.",
        ),
    )
    durability: StorageDurability = field(
        default="sync",
        metadata=_doc(
            "When a QoS 1/2 PUBLISH is acknowledged. `sync`: only after it is committed and "
            "flushed to disk (fsync) for every persistent-session subscriber, and retained "
            "state likewise, so nothing acknowledged is lost. `batch`: after the commit, "
            "without waiting for the flush; a broker crash loses nothing, a power failure "
            "may lose the last moments. `none`: without waiting for the write; a broker "
            "crash may lose the last moments. Redis and MySQL flush as their server is "
            "configured (docs/storage.md).",
            precedent="Mosquitto and EMQX acknowledge before anything reaches disk.",
        ),
    )
    purge_interval: int = field(
        default=300,
        metadata=_doc(
            "Seconds between purges of expired sessions, expired messages and stored "
            "messages nothing references any more; 0 = only at start-up.",
            precedent="EMQX session_expiry checks run on a timer; Mosquitto purges at "
            "snapshot time.",
            unit="s",
            lo=0,
        ),
    )


# --- storage-backed auth: built-in users, database sources, bans, flapping ----------------
# (tidemq.auth.builtin, tidemq.auth.database, tidemq.auth.bans; see docs/security.md)

BuiltinUserId = Literal["username", "clientid"]
# EMQX password_hash_algorithm names, plus `phc` for self-describing hashes ($argon2id$...).
DbHashName = Literal["plain", "md5", "sha", "sha256", "sha512", "pbkdf2", "bcrypt", "phc"]
DbSaltPosition = Literal["disable", "prefix", "suffix"]
DbPbkdf2Mac = Literal["md5", "sha", "sha224", "sha256", "sha384", "sha512"]

_DB_PLACEHOLDERS: Final = ("username", "clientid", "peerhost", "cert_common_name", "cert_subject")


def _check_placeholders(text: str) -> str | None:
    for name in re.findall(r"\$\{([^}]*)\}", text):
        if name not in _DB_PLACEHOLDERS:
            return f"unknown placeholder ${{{name}}}; use " + ", ".join(
                f"${{{p}}}" for p in _DB_PLACEHOLDERS
            )
    return None


def _check_db_url(schemes: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(url: str) -> str | None:
        if urlsplit(url).scheme not in schemes:
            return f"must be a {' or '.join(s + '://' for s in schemes)} URL"
        return None

    return check


@dataclass(frozen=True, slots=True)
class BuiltinAuthConfig(_Section):
    """Built-in users, kept in the storage backend (`storage.backend`) and managed with
    `tidemq ctl users`. A running broker sees a change made by `tidemq ctl` within
    `cache_ttl` seconds."""

    user_id_type: BuiltinUserId = field(
        default="username",
        metadata=_doc(
            "Look users up by the CONNECT's `username` or its `clientid`.",
            precedent="EMQX built-in database user_id_type username.",
        ),
    )
    cache_ttl: float = field(
        default=5.0,
        metadata=_doc(
            "How long a looked-up user (or its absence) is reused before storage is asked "
            "again: the longest a `tidemq ctl users` change takes to reach a running broker. "
            "0 = ask storage at every CONNECT.",
            unit="seconds",
            lo=0,
        ),
    )
    cache_max_size: int = field(
        default=10_000,
        metadata=_doc("Most users cached; the least recently used go first.", lo=1),
    )


def _db_auth_fields(what: str, url: str, schemes: tuple[str, ...]) -> dict[str, Any]:
    """The fields shared by [auth.redis], [auth.postgres] and [auth.mysql]."""
    return {
        "url": field(
            default=url,
            metadata=_doc(
                f"Where the {what} server is (user, password and database in the URL).",
                check=_check_db_url(schemes),
            ),
        ),
        "password_hash_algorithm": field(
            default="sha256",
            metadata=_doc(
                "How the stored password hash was made: `plain`, `md5`, `sha` (SHA-1), "
                "`sha256`, `sha512` (hex digests of the password and the salt, see "
                "`salt_position`), `pbkdf2` (hex, with the `pbkdf2_*` settings), `bcrypt`, "
                "or `phc` (a self-describing `$argon2id$`, `$pbkdf2-sha512$`, bcrypt or "
                "Mosquitto hash, as `tidemq passwd` writes).",
                precedent="EMQX password_hash_algorithm.name sha256.",
            ),
        ),
        "salt_position": field(
            default="suffix",
            metadata=_doc(
                "Where the salt goes for `plain`, `md5`, `sha`, `sha256` and `sha512`: "
                "`suffix` hashes password+salt, `prefix` salt+password, `disable` no salt.",
                precedent="EMQX password_hash_algorithm.salt_position suffix.",
            ),
        ),
        "pbkdf2_mac_fun": field(
            default="sha256",
            metadata=_doc("The PBKDF2 HMAC hash.", precedent="EMQX mac_fun sha256."),
        ),
        "pbkdf2_iterations": field(
            default=4096,
            metadata=_doc("PBKDF2 iterations.", precedent="EMQX iterations 4096.", lo=1),
        ),
        "pbkdf2_dk_length": field(
            default=0,
            metadata=_doc(
                "PBKDF2 derived key length in bytes; 0 = the hash's own size.",
                precedent="EMQX dk_length (the hash's size when unset).",
                unit="bytes",
                lo=0,
            ),
        ),
        "timeout": field(
            default=5.0,
            metadata=_doc(
                "Time for a connection or a query; after it the source answers `ignore`.",
                precedent="EMQX request_timeout 5s.",
                unit="seconds",
                gt=0,
            ),
        ),
    }


_REDIS_AUTHN: Final = _db_auth_fields("Redis", "redis://127.0.0.1:6379/0", ("redis", "rediss"))
_PG_AUTHN: Final = _db_auth_fields(
    "PostgreSQL", "postgresql://127.0.0.1:5432/mqtt", ("postgresql", "postgres")
)
_MY_AUTHN: Final = _db_auth_fields(
    "MySQL or MariaDB", "mysql://127.0.0.1:3306/mqtt", ("mysql", "mariadb")
)
_SQL_AUTHN_QUERY: Final = (
    "SELECT password_hash, salt, is_superuser FROM mqtt_user WHERE username = ${username} LIMIT 1"
)
_SQL_ACL_QUERY: Final = (
    "SELECT action, permission, topic FROM mqtt_acl WHERE username = ${username}"
)


def _sql_query_field(default: str, answer: str) -> Any:
    return field(
        default=default,
        metadata=_doc(
            f"The query; {answer} Placeholders (`${{username}}`, `${{clientid}}`, "
            "`${peerhost}`, `${cert_common_name}`, `${cert_subject}`) are sent as bound "
            "parameters, never spliced into the SQL.",
            precedent="EMQX query.",
            check=_check_placeholders,
        ),
    )


_SQL_AUTHN_ANSWER: Final = (
    "its first row's columns `password_hash` (or `password`), `salt` and `is_superuser` are "
    "read by name (`salt` and `is_superuser` may be absent)."
)


@dataclass(frozen=True, slots=True)
class RedisAuthConfig(_Section):
    """Users in Redis (`auth.chain` source `redis`); a client whose command finds no hash
    is not this source's (`ignore`). Needs the `redis` extra."""

    url: str = _REDIS_AUTHN["url"]
    cmd: str = field(
        default="HMGET mqtt_user:${username} password_hash salt is_superuser",
        metadata=_doc(
            "The command: `HMGET KEY FIELD...` (fields `password_hash` or `password`, "
            "`salt`, `is_superuser`) or `HGET KEY FIELD` (the hash alone). Placeholders in "
            "the key are replaced by the client's values.",
            precedent="EMQX redis cmd HMGET mqtt_user:${username} password_hash salt is_superuser.",
            check=_check_placeholders,
        ),
    )
    password_hash_algorithm: DbHashName = _REDIS_AUTHN["password_hash_algorithm"]
    salt_position: DbSaltPosition = _REDIS_AUTHN["salt_position"]
    pbkdf2_mac_fun: DbPbkdf2Mac = _REDIS_AUTHN["pbkdf2_mac_fun"]
    pbkdf2_iterations: int = _REDIS_AUTHN["pbkdf2_iterations"]
    pbkdf2_dk_length: int = _REDIS_AUTHN["pbkdf2_dk_length"]
    timeout: float = _REDIS_AUTHN["timeout"]


@dataclass(frozen=True, slots=True)
class PostgresAuthConfig(_Section):
    """Users in PostgreSQL (`auth.chain` source `postgres`); no row means not this
    source's user (`ignore`). Needs the `postgres` extra."""

    url: str = _PG_AUTHN["url"]
    query: str = _sql_query_field(_SQL_AUTHN_QUERY, _SQL_AUTHN_ANSWER)
    password_hash_algorithm: DbHashName = _PG_AUTHN["password_hash_algorithm"]
    salt_position: DbSaltPosition = _PG_AUTHN["salt_position"]
    pbkdf2_mac_fun: DbPbkdf2Mac = _PG_AUTHN["pbkdf2_mac_fun"]
    pbkdf2_iterations: int = _PG_AUTHN["pbkdf2_iterations"]
    pbkdf2_dk_length: int = _PG_AUTHN["pbkdf2_dk_length"]
    timeout: float = _PG_AUTHN["timeout"]


@dataclass(frozen=True, slots=True)
class MySQLAuthConfig(_Section):
    """Users in MySQL or MariaDB (`auth.chain` source `mysql`); no row means not this
    source's user (`ignore`). Needs the `mysql` extra."""

    url: str = _MY_AUTHN["url"]
    query: str = _sql_query_field(_SQL_AUTHN_QUERY, _SQL_AUTHN_ANSWER)
    password_hash_algorithm: DbHashName = _MY_AUTHN["password_hash_algorithm"]
    salt_position: DbSaltPosition = _MY_AUTHN["salt_position"]
    pbkdf2_mac_fun: DbPbkdf2Mac = _MY_AUTHN["pbkdf2_mac_fun"]
    pbkdf2_iterations: int = _MY_AUTHN["pbkdf2_iterations"]
    pbkdf2_dk_length: int = _MY_AUTHN["pbkdf2_dk_length"]
    timeout: float = _MY_AUTHN["timeout"]


def _db_acl_fields(what: str, url: str, schemes: tuple[str, ...]) -> dict[str, Any]:
    return {
        "url": field(
            default=url,
            metadata=_doc(
                f"Where the {what} server is (user, password and database in the URL).",
                check=_check_db_url(schemes),
            ),
        ),
        "timeout": field(
            default=5.0,
            metadata=_doc(
                "Time for a connection or a query; after it the client gets no rules from "
                "this source (it answers `ignore`).",
                precedent="EMQX request_timeout 5s.",
                unit="seconds",
                gt=0,
            ),
        ),
    }


_REDIS_AUTHZ: Final = _db_acl_fields("Redis", "redis://127.0.0.1:6379/0", ("redis", "rediss"))
_PG_AUTHZ: Final = _db_acl_fields(
    "PostgreSQL", "postgresql://127.0.0.1:5432/mqtt", ("postgresql", "postgres")
)
_MY_AUTHZ: Final = _db_acl_fields(
    "MySQL or MariaDB", "mysql://127.0.0.1:3306/mqtt", ("mysql", "mariadb")
)
_SQL_ACL_ANSWER: Final = (
    "each row is one rule, with columns `permission` (`allow`/`deny`), `action` "
    "(`publish`, `subscribe`, `all`) and `topic` (a filter; `${username}`/`${clientid}` "
    "in it are replaced, `eq ` makes it literal), read by name; rows are tried in order."
)


@dataclass(frozen=True, slots=True)
class RedisAclConfig(_Section):
    """ACL rules in Redis (`acl.sources` source `redis`), fetched once per connection (at
    CONNECT): every rule found allows; a request no rule matches is left to the next
    source. Needs the `redis` extra."""

    url: str = _REDIS_AUTHZ["url"]
    cmd: str = field(
        default="HGETALL mqtt_acl:${username}",
        metadata=_doc(
            "The command: `HGETALL KEY`, a hash of topic filter → action (`publish`, "
            "`subscribe`, `all`), each an allow rule.",
            precedent="EMQX redis authz cmd HGETALL mqtt_acl:${username}.",
            check=_check_placeholders,
        ),
    )
    timeout: float = _REDIS_AUTHZ["timeout"]


@dataclass(frozen=True, slots=True)
class PostgresAclConfig(_Section):
    """ACL rules in PostgreSQL (`acl.sources` source `postgres`), fetched once per
    connection (at CONNECT). Needs the `postgres` extra."""

    url: str = _PG_AUTHZ["url"]
    query: str = _sql_query_field(_SQL_ACL_QUERY, _SQL_ACL_ANSWER)
    timeout: float = _PG_AUTHZ["timeout"]


@dataclass(frozen=True, slots=True)
class MySQLAclConfig(_Section):
    """ACL rules in MySQL or MariaDB (`acl.sources` source `mysql`), fetched once per
    connection (at CONNECT). Needs the `mysql` extra."""

    url: str = _MY_AUTHZ["url"]
    query: str = _sql_query_field(_SQL_ACL_QUERY, _SQL_ACL_ANSWER)
    timeout: float = _MY_AUTHZ["timeout"]


@dataclass(frozen=True, slots=True)
class BuiltinAclConfig(_Section):
    """Built-in ACL rules (`acl.sources` source `builtin`), kept in the storage backend
    (`storage.backend`) and managed with `tidemq ctl acl`. A client's rules are its
    username's, then its client id's, then the rules for all, in the order they were added;
    the first that matches decides. A running broker sees a `tidemq ctl acl` change within
    `cache_ttl` plus `acl.cache_ttl` seconds (the answers already cached per client)."""

    cache_ttl: float = field(
        default=5.0,
        metadata=_doc(
            "How long the rules of one username, one client id, or for all, once read, are "
            "reused before storage is asked again. 0 = ask storage for every authorization "
            "answer not already cached (`acl.cache_ttl`).",
            unit="seconds",
            lo=0,
        ),
    )
    cache_max_size: int = field(
        default=10_000,
        metadata=_doc(
            "Most rule lists cached (one per username, per client id, and the rules for "
            "all); the least recently used go first.",
            lo=1,
        ),
    )


@dataclass(frozen=True, slots=True)
class BansConfig(_Section):
    """Bans by client id, username or address (CIDR), kept in storage and managed with
    `tidemq ctl ban`. A banned client gets CONNACK 0x8A Banned (MQTT 5) or 5 Not authorized
    (3.1.1) before any authentication; when a ban takes effect, the connected clients it
    matches are disconnected (MQTT 5: DISCONNECT 0x98 Administrative action), as EMQX
    kicks a banned client."""

    refresh_interval: float = field(
        default=5.0,
        metadata=_doc(
            "How often the broker reloads the bans from storage: the longest a ban made by "
            "`tidemq ctl` (another process) takes to reach it. 0 = load once at start.",
            unit="seconds",
            lo=0,
        ),
    )


@dataclass(frozen=True, slots=True)
class FlappingConfig(_Section):
    """Flapping detection: a client id whose connections end `max_count` times within
    `window_time` is banned (by client id, `by = flapping`) for `ban_time`."""

    enable: bool = field(
        default=False,
        metadata=_doc("Detect flapping clients.", precedent="EMQX flapping_detect.enable false."),
    )
    max_count: int = field(
        default=15,
        metadata=_doc(
            "Disconnects within `window_time` that make a client flapping.",
            precedent="EMQX flapping_detect.max_count 15.",
            lo=1,
        ),
    )
    window_time: float = field(
        default=60.0,
        metadata=_doc(
            "The detection window.",
            precedent="EMQX flapping_detect.window_time 1m.",
            unit="seconds",
            gt=0,
        ),
    )
    ban_time: float = field(
        default=300.0,
        metadata=_doc(
            "How long a flapping client id is banned.",
            precedent="EMQX flapping_detect.ban_time 5m.",
            unit="seconds",
            gt=0,
        ),
    )


# --- authentication and authorization (tidemq.auth; see docs/security.md) -----------------

# The source names of tidemq.auth.plugin, repeated because config stays free of auth imports.
_AUTH_SOURCES: Final = (
    "password_file",
    "builtin",
    "jwt",
    "http",
    "redis",
    "postgres",
    "mysql",
    "cert",
)
_ACL_SOURCES: Final = ("file", "builtin", "http", "redis", "postgres", "mysql")
HttpMethod = Literal["post", "get"]
HttpBodyFormat = Literal["json", "form"]
JwtFrom = Literal["password", "username"]
AclNoMatch = Literal["allow", "deny"]
AclDeliveryCheck = Literal["auto", "on", "off"]


def _check_sources(known: tuple[str, ...]) -> Callable[[tuple[str, ...]], str | None]:
    def check(names: tuple[str, ...]) -> str | None:
        for name in names:
            if name not in known:
                return f"unknown source {name!r}; sources are {', '.join(known)}" + _suggest(
                    name, known
                )
        if len(set(names)) != len(names):
            return "a source is named twice"
        return None

    return check


def _check_pairs(separator: str) -> Callable[[tuple[str, ...]], str | None]:
    def check(items: tuple[str, ...]) -> str | None:
        for item in items:
            name, sep, _ = item.partition(separator)
            if not sep or not name.strip():
                return f"expected NAME{separator}VALUE items, got {item!r}"
        return None

    return check


def _check_url(url: str) -> str | None:
    if url and urlsplit(url).scheme not in ("http", "https"):
        return f"must be an http:// or https:// URL, got {url!r}"
    return None


@dataclass(frozen=True, slots=True)
class PasswordFileConfig(_Section):
    """The password file: `username:hash` lines written by `tidemq passwd` (argon2id,
    pbkdf2-sha512, bcrypt) or by Mosquitto's `mosquitto_passwd`. Read at start, again when
    it changes (checked at most once a second) and on SIGHUP."""

    path: str = field(
        default="",
        metadata=_doc(
            "The password file. Setting it with an empty `auth.chain` makes the chain "
            '`["password_file"]`.',
            precedent="Mosquitto password_file.",
        ),
    )


@dataclass(frozen=True, slots=True)
class JwtConfig(_Section):
    """JSON Web Tokens as passwords (or usernames): signed with an HMAC secret, an RSA or EC
    key, or a key from a JWKS URL; `exp` and `nbf` are checked. Needs PyJWT (a core
    dependency); a JWKS URL also needs the `http` extra."""

    secret: str = field(
        default="",
        metadata=_doc("HMAC secret (HS256/HS384/HS512).", precedent="EMQX authn jwt secret."),
    )
    secret_base64: bool = field(
        default=False,
        metadata=_doc("`secret` is base64-encoded.", precedent="EMQX secret_base64_encoded."),
    )
    public_key: str = field(
        default="",
        metadata=_doc(
            "PEM file with the RSA or EC public key (or certificate) that verifies tokens.",
            precedent="EMQX authn jwt public_key.",
        ),
    )
    jwks_url: str = field(
        default="",
        metadata=_doc(
            "URL of a JSON Web Key Set; keys are chosen by the token's `kid`, cached and "
            "fetched again every `jwks_refresh` seconds or when an unknown `kid` appears.",
            precedent="EMQX authn jwt endpoint (use_jwks).",
            check=_check_url,
        ),
    )
    jwks_refresh: float = field(
        default=300.0,
        metadata=_doc(
            "How often the JWKS is fetched again.",
            precedent="EMQX refresh_interval 300s.",
            unit="seconds",
            gt=0,
        ),
    )
    algorithms: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Signature algorithms accepted (`HS256`, `RS256`, `ES256`, ...). Empty: the "
            "HMAC ones with `secret`, the RSA, RSA-PSS and EC ones with `public_key` or "
            "`jwks_url`. `none` is always refused."
        ),
    )
    token_from: JwtFrom = field(
        default="password",
        metadata=_doc(
            "Where the client puts the token.", precedent="EMQX authn jwt from = password."
        ),
    )
    verify_claims: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Claims that must equal a value, as `CLAIM=TEMPLATE` items; templates may use "
            "`${clientid}` and `${username}`.",
            precedent="EMQX verify_claims.",
            check=_check_pairs("="),
            example='e.g. verify_claims = ["clientid=${clientid}", "username=${username}"]',
        ),
    )
    acl_claim: str = field(
        default="acl",
        metadata=_doc(
            "Claim holding the client's own ACL rules (EMQX format); empty: none read.",
            precedent="EMQX acl claim.",
        ),
    )
    leeway: float = field(
        default=10.0,
        metadata=_doc("Clock skew allowed on `exp` and `nbf`.", unit="seconds", lo=0),
    )
    disconnect_after_expire: bool = field(
        default=True,
        metadata=_doc(
            "Disconnect a client when the token it connected with expires (`exp` plus "
            "`leeway`, when the same token would be refused at CONNECT): MQTT 5 clients get "
            "DISCONNECT 0x87 Not authorized, MQTT 3 clients are closed; the will is "
            "published. Tokens without `exp` never end a connection.",
            precedent="EMQX authn jwt disconnect_after_expire true.",
        ),
    )


def _http_fields(what: str, precedent: str) -> dict[str, Any]:
    """The fields shared by [auth.http] and [acl.http] (each its own section class)."""
    return {
        "url": field(
            default="",
            metadata=_doc(
                f"URL of the {what} service; it may contain templates.",
                precedent=f"EMQX {precedent} http url.",
                check=_check_url,
            ),
        ),
        "method": field(
            default="post",
            metadata=_doc(
                "`post` sends `body` in the request body, `get` in the query string.",
                precedent="EMQX method post.",
            ),
        ),
        "body_format": field(
            default="json",
            metadata=_doc("How a POST body is encoded: a JSON object or a form."),
        ),
        "headers": field(
            default=(),
            metadata=_doc(
                "Extra request headers, as `Name: value` items.",
                precedent="EMQX headers.",
                check=_check_pairs(":"),
            ),
        ),
        "timeout": field(
            default=5.0,
            metadata=_doc(
                "Time for the whole request; after it the source answers `ignore`.",
                precedent="EMQX request_timeout 5s.",
                unit="seconds",
                gt=0,
            ),
        ),
        "cache_ttl": field(
            default=0.0 if what == "authentication" else 60.0,
            metadata=_doc(
                "How long an `allow` or `deny` answer is reused for the same request. "
                "0 = not cached.",
                unit="seconds",
                lo=0,
            ),
        ),
        "cache_max_size": field(
            default=10_000,
            metadata=_doc("Most answers cached; the oldest go first.", lo=1),
        ),
    }


_HTTP_AUTHN: Final = _http_fields("authentication", "authn")
_HTTP_AUTHZ: Final = _http_fields("authorization", "authz")


@dataclass(frozen=True, slots=True)
class HttpAuthConfig(_Section):
    """The HTTP callout for authentication: a request to `url` for each CONNECT, answered
    with JSON `{"result": "allow" | "deny" | "ignore", "is_superuser": false}` or 204
    (allow); other statuses, errors and timeouts answer `ignore` and are logged. Templates
    use `${clientid}`, `${username}`, `${password}`, `${peerhost}`, `${cert_common_name}`.
    Needs the `http` extra (aiohttp)."""

    url: str = _HTTP_AUTHN["url"]
    method: HttpMethod = _HTTP_AUTHN["method"]
    body_format: HttpBodyFormat = _HTTP_AUTHN["body_format"]
    body: tuple[str, ...] = field(
        default=(
            "clientid=${clientid}",
            "username=${username}",
            "password=${password}",
            "peerhost=${peerhost}",
        ),
        metadata=_doc(
            "The request's fields, as `NAME=TEMPLATE` items.",
            precedent="EMQX body.",
            check=_check_pairs("="),
        ),
    )
    headers: tuple[str, ...] = _HTTP_AUTHN["headers"]
    timeout: float = _HTTP_AUTHN["timeout"]
    cache_ttl: float = _HTTP_AUTHN["cache_ttl"]
    cache_max_size: int = _HTTP_AUTHN["cache_max_size"]


@dataclass(frozen=True, slots=True)
class HttpAclConfig(_Section):
    """The HTTP callout for authorization: a request to `url` for each PUBLISH or SUBSCRIBE
    the client's cache cannot answer, with the same answers as [auth.http]. Templates use
    `${clientid}`, `${username}`, `${peerhost}`, `${cert_common_name}`, `${action}`
    (`publish` or `subscribe`), `${topic}`, `${qos}`, `${retain}`. The client's packets wait
    for the answer."""

    url: str = _HTTP_AUTHZ["url"]
    method: HttpMethod = _HTTP_AUTHZ["method"]
    body_format: HttpBodyFormat = _HTTP_AUTHZ["body_format"]
    body: tuple[str, ...] = field(
        default=(
            "clientid=${clientid}",
            "username=${username}",
            "peerhost=${peerhost}",
            "action=${action}",
            "topic=${topic}",
            "qos=${qos}",
            "retain=${retain}",
        ),
        metadata=_doc(
            "The request's fields, as `NAME=TEMPLATE` items.",
            precedent="EMQX body.",
            check=_check_pairs("="),
        ),
    )
    headers: tuple[str, ...] = _HTTP_AUTHZ["headers"]
    timeout: float = _HTTP_AUTHZ["timeout"]
    cache_ttl: float = _HTTP_AUTHZ["cache_ttl"]
    cache_max_size: int = _HTTP_AUTHZ["cache_max_size"]


@dataclass(frozen=True, slots=True)
class AuthRateLimitConfig(_Section):
    """Authentication failures per client address: after `max_failures` within `window`,
    CONNECTs from that address are refused at once (MQTT 5: CONNACK 0x9F Connection rate
    exceeded; 3.1.1: 5 Not authorized) for `block_time`."""

    max_failures: int = field(
        default=10,
        metadata=_doc("Failures that start a block. 0 = no limit.", lo=0),
    )
    window: float = field(
        default=60.0,
        metadata=_doc("Time window in which failures are counted.", unit="seconds", gt=0),
    )
    block_time: float = field(
        default=60.0,
        metadata=_doc("How long an address stays blocked.", unit="seconds", gt=0),
    )
    max_addresses: int = field(
        default=100_000,
        metadata=_doc("Most addresses tracked; the least recently seen are forgotten first.", lo=1),
    )


@dataclass(frozen=True, slots=True)
class AuthConfig(_Section):
    """Authentication: the sources asked for each CONNECT, in order; the first answer that
    is not `ignore` wins. When every source ignores a client, `mqtt.allow_anonymous`
    decides for clients without a username and the others are refused (CONNACK 5 Not
    authorized, 0x87 on MQTT 5, as Mosquitto). See docs/security.md."""

    chain: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Authentication sources in order: `password_file`, `builtin` (users kept in "
            "storage), `jwt`, `http`, `redis`, `postgres`, `mysql`, `cert` (a verified TLS "
            "client certificate is enough). Empty: `password_file` when "
            "`auth.password_file.path` is set, else none (only `mqtt.allow_anonymous` "
            "applies).",
            precedent="EMQX authentication chain; Mosquitto password_file then plugins.",
            check=_check_sources(_AUTH_SOURCES),
        ),
    )
    password_file: PasswordFileConfig = field(default_factory=PasswordFileConfig)
    builtin: BuiltinAuthConfig = field(default_factory=BuiltinAuthConfig)
    redis: RedisAuthConfig = field(default_factory=RedisAuthConfig)
    postgres: PostgresAuthConfig = field(default_factory=PostgresAuthConfig)
    mysql: MySQLAuthConfig = field(default_factory=MySQLAuthConfig)
    jwt: JwtConfig = field(default_factory=JwtConfig)
    http: HttpAuthConfig = field(default_factory=HttpAuthConfig)
    rate_limit: AuthRateLimitConfig = field(default_factory=AuthRateLimitConfig)


@dataclass(frozen=True, slots=True)
class AclConfig(_Section):
    """Authorization: the ACL sources asked for each PUBLISH and SUBSCRIBE, after the
    client's own rules (a JWT `acl` claim, rules stored with the user); the first `allow`
    or `deny` wins, and `no_match` decides when none answers. Superusers bypass it. See
    docs/security.md for the ACL file format."""

    sources: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "ACL sources in order: `file`, `builtin`, `http`, `redis`, `postgres`, "
            "`mysql`. Empty: `file` when `acl.file` is set, else none.",
            precedent="EMQX authorization sources.",
            check=_check_sources(_ACL_SOURCES),
        ),
    )
    file: str = field(
        default="",
        metadata=_doc(
            "The ACL file (TideMQ rules, or a Mosquitto acl_file), read at start, again "
            "when it changes (checked at most once a second) and on SIGHUP.",
            precedent="EMQX authorization file; Mosquitto acl_file.",
        ),
    )
    no_match: AclNoMatch = field(
        default="allow",
        metadata=_doc(
            "The answer when no rule and no source decides. A Mosquitto-format ACL file "
            "denies what it does not allow itself, as in Mosquitto.",
            precedent="EMQX authorization.no_match allow.",
        ),
    )
    check_on_delivery: AclDeliveryCheck = field(
        default="auto",
        metadata=_doc(
            "Also check each message's topic against the client's subscribe (read) rules "
            "when it is delivered, dropping it for that client alone when denied (counted "
            "in `messages_dropped_acl`). `auto`: on exactly when `acl.file` is in "
            "Mosquitto's format; `off`: subscriptions are checked, deliveries are not. Only "
            "the ACL file, the client's own rules (a JWT `acl` claim) and superuser are "
            "asked per delivery; `http`, `builtin` and the database sources are not.",
            precedent="Mosquitto checks read access on every message; EMQX checks "
            "subscriptions only.",
        ),
    )
    cache_ttl: float = field(
        default=60.0,
        metadata=_doc(
            "How long a client's authorization answers are reused; 0 = no cache. The cache "
            "is dropped when an ACL file is reloaded.",
            precedent="EMQX authorization.cache.ttl 1m.",
            unit="seconds",
            lo=0,
        ),
    )
    cache_max_size: int = field(
        default=32,
        metadata=_doc(
            "Most answers cached per client; the least recently used go first.",
            precedent="EMQX authorization.cache.max_size 32.",
            lo=1,
        ),
    )
    builtin: BuiltinAclConfig = field(default_factory=BuiltinAclConfig)
    http: HttpAclConfig = field(default_factory=HttpAclConfig)
    redis: RedisAclConfig = field(default_factory=RedisAclConfig)
    postgres: PostgresAclConfig = field(default_factory=PostgresAclConfig)
    mysql: MySQLAclConfig = field(default_factory=MySQLAclConfig)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration. Build it with ``load_config``; derive variants with
    ``dataclasses.replace`` or ``with_values``."""

    node: NodeConfig = field(default_factory=NodeConfig)
    listeners: ListenersConfig = field(default_factory=ListenersConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    mqtt: MQTTConfig = field(default_factory=MQTTConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    acl: AclConfig = field(default_factory=AclConfig)
    bans: BansConfig = field(default_factory=BansConfig)
    flapping: FlappingConfig = field(default_factory=FlappingConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            cls = _SECTION_TYPES[f.name]
            if not isinstance(getattr(self, f.name), cls):
                raise ConfigError(f"must be a {cls.__name__}", key=f.name)
        limits = self.limits
        if limits.default_session_expiry > limits.max_session_expiry:
            raise ConfigError(
                f"{limits.default_session_expiry} exceeds limits.max_session_expiry "
                f"({limits.max_session_expiry})",
                key="limits.default_session_expiry",
            )

    def with_values(self, values: Mapping[str, object]) -> Config:
        """A copy with some keys changed: ``{"limits.max_inflight": 2}``. Values are typed
        as in TOML, or strings as in environment variables.

        Raises:
            ConfigError: an unknown key or a bad value.
        """
        changes: dict[str, dict[str, object]] = {}
        for dotted, value in values.items():
            spec = _lookup(dotted, "with_values")
            try:
                typed = _convert(spec, value, from_string=isinstance(value, str))
                _validate(spec, typed)
            except _Invalid as exc:
                raise ConfigError(str(exc), key=spec.dotted, source="with_values") from None
            changes.setdefault(spec.section, {})[spec.name] = typed
        sections = {
            f.name: _replace_section(f.name, getattr(self, f.name), changes)
            for f in dataclasses.fields(self)
            if any(s == f.name or s.startswith(f.name + ".") for s in changes)
        }
        return dataclasses.replace(self, **sections)


def _replace_section(
    section: str, current: Any, changes: Mapping[str, Mapping[str, object]]
) -> Any:
    """*current* (the section named *section*) with *changes* applied, sub-sections first."""
    fields = dict(changes.get(section, {}))
    for attr, child in _SUBSECTIONS[section]:
        if any(s == child or s.startswith(child + ".") for s in changes):
            fields[attr] = _replace_section(child, getattr(current, attr), changes)
    return dataclasses.replace(current, **fields) if fields else current


# --- the key table ------------------------------------------------------------------------

_Kind = Literal["bool", "int", "float", "str", "choice", "list"]


@dataclass(frozen=True, slots=True)
class _Key:
    """One setting, as the loaders, the flags and the documentation see it."""

    section: str
    name: str
    kind: _Kind
    choices: tuple[str, ...]
    default: object
    doc: str
    precedent: str
    unit: str
    lo: float | None
    hi: float | None
    gt: float | None
    check: Callable[[Any], str | None] | None
    doc_default: str | None
    example: str

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.replace('.', '_')}_{self.name}".upper()

    @property
    def flag(self) -> str:
        return f"--{self.section}.{self.name.replace('_', '-')}"


def _kind_of(tp: object) -> tuple[_Kind, tuple[str, ...]]:
    if tp is bool:
        return "bool", ()
    if tp is int:
        return "int", ()
    if tp is float:
        return "float", ()
    if tp is str:
        return "str", ()
    if get_origin(tp) is Literal:
        return "choice", tuple(str(arg) for arg in get_args(tp))
    if get_origin(tp) is tuple and get_args(tp) == (str, Ellipsis):
        return "list", ()
    raise TypeError(f"unsupported config field type {tp!r}")


def _is_section(tp: object) -> bool:
    return isinstance(tp, type) and issubclass(tp, _Section)


def _section_types() -> tuple[dict[str, type[Any]], dict[str, list[tuple[str, str]]]]:
    """Every section by dotted name (``listeners.tls``), parents before their children, and
    each section's sub-sections as (attribute, dotted name)."""
    types: dict[str, type[Any]] = {}
    children: dict[str, list[tuple[str, str]]] = {}

    def visit(name: str, cls: type[Any]) -> None:
        types[name] = cls
        children[name] = []
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if _is_section(hints[f.name]):
                children[name].append((f.name, f"{name}.{f.name}"))
        for attr, child in children[name]:
            visit(child, hints[attr])

    config_hints = get_type_hints(Config)
    for f in dataclasses.fields(Config):
        visit(f.name, config_hints[f.name])
    return types, children


def _build_keys() -> dict[str, dict[str, _Key]]:
    table: dict[str, dict[str, _Key]] = {}
    for section, cls in _SECTION_TYPES.items():
        hints = get_type_hints(cls)
        keys: dict[str, _Key] = {}
        for f in dataclasses.fields(cls):
            if _is_section(hints[f.name]):
                continue
            kind, choices = _kind_of(hints[f.name])
            m = f.metadata
            default = f.default if f.default is not dataclasses.MISSING else None
            keys[f.name] = _Key(
                section, f.name, kind, choices, default, m["help"], m["precedent"],
                m["unit"], m["min"], m["max"], m["gt"], m["check"], m["doc_default"],
                m["example"],
            )  # fmt: skip
        table[section] = keys
    return table


_SECTION_TYPES, _SUBSECTIONS = _section_types()
_KEYS: Final = _build_keys()
_SECTION_OF_TYPE: Final = {cls: name for name, cls in _SECTION_TYPES.items()}


def _all_keys() -> Iterable[_Key]:
    for keys in _KEYS.values():
        yield from keys.values()


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _lookup(dotted: str, source: str) -> _Key:
    section, sep, name = dotted.strip().rpartition(".")
    name = name.replace("-", "_")
    if not sep or section not in _KEYS:
        raise ConfigError(
            f"unknown key {dotted!r}: keys look like SECTION.KEY, with SECTION one of "
            f"{', '.join(_KEYS)}{_suggest(section, _KEYS)}",
            source=source,
        )
    keys = _KEYS[section]
    if name not in keys:
        raise ConfigError(
            f"unknown key {dotted!r}: [{section}] has {', '.join(keys)}{_suggest(name, keys)}",
            source=source,
        )
    return keys[name]


# --- conversion and checks ----------------------------------------------------------------

_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_KIND_NAMES: Final[dict[str, str]] = {
    "bool": "a boolean",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "choice": "a string",
    "list": "a list of strings",
}


def _describe(value: object) -> str:
    """``integer 5``, ``string "x"``: a value as the user wrote it, for error messages."""
    names = {bool: "boolean", int: "integer", float: "float", str: "string", dict: "table"}
    kind = names.get(type(value), "array" if isinstance(value, list | tuple) else "value")
    try:
        text = _toml_value(value)
    except TypeError:
        text = repr(value)
    return f"{kind} {text}"


def _parse_list(text: str) -> list[str]:
    """A list from a string: a TOML array (``["a", "b"]``) or comma-separated items."""
    text = text.strip()
    if text.startswith("["):
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise _Invalid(f"expected a TOML array of strings, got {text!r}: {exc}") from None
        if not all(isinstance(item, str) for item in value):
            raise _Invalid(f"expected a TOML array of strings, got {text!r}")
        return list(value)
    return [item.strip() for item in text.split(",") if item.strip()]


def _convert(spec: _Key, value: object, *, from_string: bool) -> object:
    """The field's Python value from a TOML/Python value, or from a string (environment,
    flags), which is parsed according to the field's type."""
    kind = spec.kind
    if from_string and isinstance(value, str):
        text = value.strip()
        if kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise _Invalid(f"expected a boolean (true/false, yes/no, on/off, 1/0), got {value!r}")
        if kind == "int":
            try:
                return int(text)
            except ValueError:
                raise _Invalid(f"expected an integer, got {value!r}") from None
        if kind == "float":
            try:
                return float(text)
            except ValueError:
                raise _Invalid(f"expected a number, got {value!r}") from None
        if kind == "choice":
            return text.lower()
        if kind == "list":
            return tuple(_parse_list(value))
        return value
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "choice": isinstance(value, str),
        "list": isinstance(value, list | tuple) and all(isinstance(v, str) for v in value),
    }[kind]
    if not ok:
        raise _Invalid(f"expected {_KIND_NAMES[kind]}, got {_describe(value)}")
    if kind == "float" and type(value) is not float:
        return float(value)  # type: ignore[arg-type]
    if kind == "choice":
        return str(value).lower()
    if kind == "list" and type(value) is not tuple:
        return tuple(value)  # type: ignore[arg-type]
    return value


def _range_text(spec: _Key) -> str:
    def num(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else str(x)

    if spec.gt is not None:
        return f"greater than {num(spec.gt)}"
    if spec.lo is not None and spec.hi is not None:
        return f"from {num(spec.lo)} to {num(spec.hi)}"
    if spec.lo is not None:
        return f"at least {num(spec.lo)}"
    if spec.hi is not None:
        return f"at most {num(spec.hi)}"
    return ""


def _validate(spec: _Key, value: Any) -> None:
    """Range, choice and custom checks on an already converted value."""
    if spec.kind in ("int", "float"):
        if spec.kind == "float" and not math.isfinite(value):
            raise _Invalid(f"must be a finite number, got {value}")
        if (
            (spec.lo is not None and value < spec.lo)
            or (spec.hi is not None and value > spec.hi)
            or (spec.gt is not None and value <= spec.gt)
        ):
            raise _Invalid(f"must be {_range_text(spec)}, got {value}")
    if spec.kind == "choice" and value not in spec.choices:
        raise _Invalid(f"must be one of {', '.join(spec.choices)}; got {value!r}")
    if spec.check is not None:
        error = spec.check(value)
        if error is not None:
            raise _Invalid(error)


def _check_section(section: _Section) -> None:
    name = _SECTION_OF_TYPE[type(section)]
    for attr, child in _SUBSECTIONS[name]:
        cls = _SECTION_TYPES[child]
        if not isinstance(getattr(section, attr), cls):
            raise ConfigError(f"must be a {cls.__name__}", key=child)
    for spec in _KEYS[name].values():
        value = getattr(section, spec.name)
        try:
            typed = _convert(spec, value, from_string=False)
            _validate(spec, typed)
        except _Invalid as exc:
            raise ConfigError(str(exc), key=spec.dotted) from None
        if typed is not value:
            object.__setattr__(section, spec.name, typed)


# --- loading ------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration: defaults, then the TOML file, then environment variables,
    then overrides (dotted keys to strings, usually from ``overrides_from_args``).

    Args:
        path: the TOML file; None reads the file named by ``TIDEMQ_CONFIG`` in *env*, if
            any, else none.
        env: the environment (default ``os.environ``); ``TIDEMQ_<SECTION>_<KEY>`` variables
            are read, every other ``TIDEMQ_`` variable except ``TIDEMQ_CONFIG``,
            ``TIDEMQ_TEST_*`` and the build switches ``TIDEMQ_MYPYC`` and
            ``TIDEMQ_NO_EXTENSIONS`` is an error.
        overrides: ``{"limits.max_packet_size": "2048"}``; values are parsed as in *env*.

    Raises:
        ConfigError: an unreadable or invalid file, an unknown section or key, or a bad
            value; the message names the key and the source.
    """
    if env is None:
        env = os.environ
    if path is None and env.get(ENV_CONFIG_FILE):
        path = env[ENV_CONFIG_FILE]
    values: dict[str, dict[str, object]] = {name: {} for name in _KEYS}
    sources: dict[str, str] = {}

    def put(spec: _Key, value: object, source: str, *, from_string: bool) -> None:
        try:
            typed = _convert(spec, value, from_string=from_string)
            _validate(spec, typed)
        except _Invalid as exc:
            raise ConfigError(str(exc), key=spec.dotted, source=source) from None
        values[spec.section][spec.name] = typed
        sources[spec.dotted] = source

    if path is not None:
        source = f"config file {os.fspath(path)}"
        for spec, value in _read_toml(path, source):
            put(spec, value, source, from_string=False)
    for name, value in sorted(env.items()):
        spec_or_none = _env_key(name)
        if spec_or_none is not None:
            put(spec_or_none, value, f"environment variable {name}", from_string=True)
    for dotted, value in (overrides or {}).items():
        source = f"override {dotted}={value}"
        put(_lookup(dotted, source), value, source, from_string=True)

    def build(section: str) -> Any:
        kwargs = dict(values[section])
        for attr, child in _SUBSECTIONS[section]:
            kwargs[attr] = build(child)
        return _SECTION_TYPES[section](**kwargs)

    try:
        return Config(**{f.name: build(f.name) for f in dataclasses.fields(Config)})
    except ConfigError as exc:
        if exc.source is None and exc.key in sources:
            raise ConfigError(exc.message, key=exc.key, source=sources[exc.key]) from None
        raise


def _read_toml(path: str | os.PathLike[str], source: str) -> list[tuple[_Key, object]]:
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {os.fspath(path)}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", source=source) from None
    found: list[tuple[_Key, object]] = []
    top = [f.name for f in dataclasses.fields(Config)]
    for section, table in data.items():
        if section not in top:
            raise ConfigError(
                f"unknown section [{section}]; sections are {', '.join(top)}"
                f"{_suggest(section, top)}",
                key=section,
                source=source,
            )
        _read_table(section, table, source, found)
    return found


def _read_table(section: str, table: object, source: str, found: list[tuple[_Key, object]]) -> None:
    if not isinstance(table, dict):
        raise ConfigError(
            f"must be a table ([{section}]), got {_describe(table)}",
            key=section,
            source=source,
        )
    keys = _KEYS[section]
    subsections = dict(_SUBSECTIONS[section])
    for name, value in table.items():
        if name in subsections:
            _read_table(subsections[name], value, source, found)
            continue
        if name not in keys:
            known = [*keys, *(f"[{child}]" for child in subsections.values())]
            raise ConfigError(
                f"unknown key; [{section}] has {', '.join(known)}"
                f"{_suggest(name, [*keys, *subsections])}",
                key=f"{section}.{name}",
                source=source,
            )
        found.append((keys[name], value))


def _env_key(name: str) -> _Key | None:
    """The key an environment variable sets; None for variables that are not ours."""
    if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_FILE or name in _ENV_NOT_CONFIG:
        return None
    if name.startswith(_ENV_RESERVED_PREFIXES):
        return None
    source = f"environment variable {name}"
    rest = name[len(ENV_PREFIX) :].lower()
    section, _, key = rest.partition("_")
    # A sub-section's variables carry its dotted name with underscores
    # (TIDEMQ_LISTENERS_TLS_CERTFILE); the longest section name that fits wins.
    for dotted in sorted(_KEYS, key=len, reverse=True):
        prefix = dotted.replace(".", "_") + "_"
        if "." in dotted and rest.startswith(prefix):
            section, key = dotted, rest[len(prefix) :]
            break
    if section not in _KEYS:
        raise ConfigError(
            f"unknown section {section!r}: variables look like TIDEMQ_<SECTION>_<KEY>, with "
            f"SECTION one of {', '.join(s.upper() for s in _KEYS)}"
            f"{_suggest(section, _KEYS)}",
            source=source,
        )
    keys = _KEYS[section]
    if key not in keys:
        raise ConfigError(
            f"unknown key {section}.{key}; [{section}] has {', '.join(keys)}{_suggest(key, keys)}",
            source=source,
        )
    return keys[key]


# --- command line -------------------------------------------------------------------------

# Short flags beside the --section.key form.
_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "listeners.listen": ("--listen",),
    "node.data_dir": ("--data-dir",),
}
_SET_DEST: Final = "config_set"
_METAVARS: Final[dict[str, str]] = {
    "bool": "BOOL",
    "int": "N",
    "float": "NUMBER",
    "str": "TEXT",
    "list": "URL",
}


def _arg_type(spec: _Key) -> Callable[[str], str]:
    """An argparse ``type`` that checks the value early and keeps the string."""

    def parse(text: str) -> str:
        try:
            value = _convert(spec, text, from_string=True)
            if spec.kind != "list":  # list items are checked once the list is complete
                _validate(spec, value)
        except _Invalid as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return parse


def _set_type(text: str) -> str:
    dotted, sep, value = text.partition("=")
    try:
        if not sep:
            raise ConfigError(f"expected KEY=VALUE, got {text!r}")
        spec = _lookup(dotted, "--set")
        _arg_type(spec)(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE``, ``--set KEY=VALUE``, one ``--section.key VALUE`` flag per key
    and the aliases ``--listen URL`` (repeatable) and ``--data-dir DIR`` to *parser*.

    Each key's flag stores its string under the dotted key as ``dest``, and only when given;
    ``overrides_from_args`` turns the parsed namespace into ``load_config`` overrides.
    """
    group = parser.add_argument_group(
        "configuration",
        "Settings override the config file and TIDEMQ_<SECTION>_<KEY> environment "
        "variables; see docs/config.md.",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"TOML config file (default: ${ENV_CONFIG_FILE} if set, else none)",
    )
    group.add_argument(
        "--set",
        dest=_SET_DEST,
        metavar="KEY=VALUE",
        action="append",
        type=_set_type,
        default=argparse.SUPPRESS,
        help="set any key, e.g. --set limits.max_packet_size=2048 (repeatable)",
    )
    for spec in _all_keys():
        text = spec.doc.split(". ")[0].rstrip(".").replace("`", "").replace("%", "%%")
        if spec.kind == "list":
            text += " (repeatable; replaces the configured list)"
        group.add_argument(
            spec.flag,
            *_ALIASES.get(spec.dotted, ()),
            dest=spec.dotted,
            metavar=_metavar(spec),
            action="append" if spec.kind == "list" else "store",
            type=_arg_type(spec),
            default=argparse.SUPPRESS,
            help=text,
        )


def _metavar(spec: _Key) -> str:
    if spec.kind == "choice":
        return "{" + ",".join(spec.choices) + "}"
    if spec.unit:
        return spec.unit.upper()
    if spec.kind == "str" and spec.name.endswith("dir"):
        return "DIR"
    return _METAVARS[spec.kind]


def overrides_from_args(ns: argparse.Namespace) -> dict[str, str]:
    """The overrides for ``load_config`` from a namespace parsed with ``add_arguments``:
    ``--set`` values first, then the ``--section.key`` flags and their aliases. Repeated
    list flags (``--listen``) are joined into one list, returned as a TOML array string."""
    given = vars(ns)
    out: dict[str, str] = {}
    for item in given.get(_SET_DEST) or ():
        dotted, _, value = item.partition("=")
        out[_lookup(dotted, "--set").dotted] = value
    for spec in _all_keys():
        if spec.dotted not in given:
            continue
        value = given[spec.dotted]
        if spec.kind == "list":
            items = [url for text in value for url in _parse_list(text)]
            out[spec.dotted] = _toml_value(items)
        else:
            out[spec.dotted] = value
    return out


# --- rendering ----------------------------------------------------------------------------

_TOML_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        out = []
        for c in value:
            if c in _TOML_ESCAPES:
                out.append(_TOML_ESCAPES[c])
            elif ord(c) < 0x20 or ord(c) == 0x7F:
                out.append(f"\\u{ord(c):04x}")
            else:
                out.append(c)
        return '"' + "".join(out) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")


def _default_text(spec: _Key) -> str:
    return _toml_value(spec.doc_default if spec.doc_default is not None else spec.default)


def _type_text(spec: _Key) -> str:
    names = {
        "bool": "boolean",
        "int": "integer",
        "float": "number",
        "str": "string",
        "choice": "string",
        "list": "list of strings",
    }
    return f"{names[spec.kind]} ({spec.unit})" if spec.unit else names[spec.kind]


def _constraints(spec: _Key) -> str:
    if spec.kind == "choice":
        return "One of " + ", ".join(f"`{c}`" for c in spec.choices) + "."
    if spec.kind in ("int", "float") and _range_text(spec) not in ("", "at least 0"):
        return _range_text(spec).capitalize() + "."
    return ""


def _comment(text: str, width: int = 98) -> list[str]:
    return [f"# {line}" for line in textwrap.wrap(text.replace("`", ""), width - 2)]


def example_toml() -> str:
    """The commented example config with every key at its default (``tidemq/default.toml``)."""
    lines = [
        "# TideMQ configuration, with every key at its default value.",
        "#",
        "# Generated from tidemq/config.py by",
        "#     python -m tidemq.config --example > tidemq/default.toml",
        "# The full reference is docs/config.md. Environment variables",
        "# (TIDEMQ_<SECTION>_<KEY>) override this file and command-line flags",
        "# (--section.key VALUE, --set section.key=VALUE) override both.",
    ]
    for section, keys in _KEYS.items():
        lines += ["", "", *_comment(_section_doc(section)), f"[{section}]"]
        for spec in keys.values():
            lines.append("")
            lines += _comment(" ".join(filter(None, [spec.doc, _constraints(spec)])))
            if spec.precedent:
                lines += _comment(f"Precedent: {spec.precedent}")
            line = f"{spec.name} = {_default_text(spec)}"
            lines.append(f"# {line}" if spec.doc_default is not None else line)
            if spec.example:
                lines += [f"# {text}" for text in spec.example.splitlines()]
    return "\n".join(lines) + "\n"


def to_toml(config: Config) -> str:
    """*config* as a TOML document that ``load_config`` reads back to an equal config."""
    lines: list[str] = []
    for section, keys in _KEYS.items():
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        values: Any = config
        for attr in section.split("."):
            values = getattr(values, attr)
        lines += [f"{name} = {_toml_value(getattr(values, name))}" for name in keys]
    return "\n".join(lines) + "\n"


def _section_doc(section: str) -> str:
    return " ".join((_SECTION_TYPES[section].__doc__ or "").split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown() -> str:
    """The configuration reference, ``docs/config.md``."""
    lines = [
        "# Configuration reference",
        "",
        "_Generated from `tidemq/config.py` by "
        "`python -m tidemq.config --markdown > docs/config.md`; do not edit by hand "
        "(`tests/test_config.py` fails when this file is out of date)._",
        "",
        "TideMQ reads one TOML file (`--config FILE`, or the file named by "
        f"`{ENV_CONFIG_FILE}`), then environment variables, then command-line flags; each "
        "source overrides the ones before it, key by key. `tidemq/default.toml` lists "
        "every key with its default value and comments.",
        "",
        "- **Environment variables** are `TIDEMQ_<SECTION>_<KEY>` in upper case, e.g. "
        "`TIDEMQ_LIMITS_MAX_PACKET_SIZE=2048`; for a sub-section the dots become "
        "underscores too (`TIDEMQ_LISTENERS_TLS_CERTFILE` for `certfile` in "
        "`[listeners.tls]`). Any other `TIDEMQ_` variable is an error, "
        f"except `{ENV_CONFIG_FILE}`, `TIDEMQ_TEST_*` and the build switches "
        '`TIDEMQ_MYPYC` and `TIDEMQ_NO_EXTENSIONS` (README, "Speed-ups").',
        "- **Flags** are `--section.key VALUE` with dashes in the key, e.g. "
        "`--limits.max-packet-size 2048` or `--listeners.tls.certfile FILE`, or "
        "`--set section.key=VALUE`. Aliases: "
        "`--listen URL` for `--listeners.listen` (repeatable; the URLs given replace the "
        "configured list) and `--data-dir DIR` for `--node.data-dir`.",
        "- **Values from strings** (variables and flags): booleans are `true`/`false`, "
        "`yes`/`no`, `on`/`off` or `1`/`0`; lists are comma-separated "
        '(`tcp://0.0.0.0:1883,tcp://[::]:1884`) or a TOML array (`["tcp://0.0.0.0:1883"]`); '
        "choices are case-insensitive. Durations are in seconds and may be fractional.",
        "- **Errors**: an unknown section or key, a value of the wrong type and a value out "
        "of range all stop the broker with a message naming the key and where the value "
        "came from.",
    ]
    for section, keys in _KEYS.items():
        lines += [
            "",
            f"## [{section}]",
            "",
            _section_doc(section),
            "",
            "| Key | Type | Default | Environment variable | Flag | Description |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for spec in keys.values():
            flags = ", ".join(f"`{flag}`" for flag in (spec.flag, *_ALIASES.get(spec.dotted, ())))
            description = " ".join(
                filter(
                    None,
                    [
                        spec.doc,
                        _constraints(spec),
                        f"Precedent: {spec.precedent}" if spec.precedent else "",
                    ],
                )
            )
            row = [
                f"`{spec.name}`",
                _type_text(spec),
                f"`{_default_text(spec)}`",
                f"`{spec.env}`",
                flags,
                description,
            ]
            lines.append("| " + " | ".join(_cell(cell) for cell in row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m tidemq.config``: print the reference (``--markdown``), the example file
    (``--example``), or the effective configuration from the file, environment and flags."""
    parser = argparse.ArgumentParser(
        prog="python -m tidemq.config",
        description="Print the TideMQ configuration reference, the example config, or the "
        "effective configuration.",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--markdown", action="store_true", help="print docs/config.md")
    what.add_argument("--example", action="store_true", help="print tidemq/default.toml")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(render_markdown())
    elif args.example:
        sys.stdout.write(example_toml())
    else:
        try:
            config = load_config(args.config, overrides=overrides_from_args(args))
        except ConfigError as exc:
            sys.stderr.write(f"tidemq: config error: {exc}\n")
            return 2
        sys.stdout.write(to_toml(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
