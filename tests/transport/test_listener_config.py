"""Listener configuration: the [listeners.tls] and [listeners.ws] sub-sections from TOML,
environment and flags, per-listener options in the URL query, and the errors for what does
not fit together."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tidemq.app import listener_spec
from tidemq.config import (
    Config,
    ConfigError,
    ListenURL,
    TLSConfig,
    add_arguments,
    load_config,
    overrides_from_args,
    parse_listen_url,
    to_toml,
)
from tidemq.transport import TLSOptions, WebSocketOptions

NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tidemq.toml"
    path.write_text(text)
    return str(path)


def test_subsections_from_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [listeners]
        listen = ["tcp://0.0.0.0:1883", "tls://0.0.0.0:8883", "wss://0.0.0.0:8084/mqtt"]
        proxy_protocol = true

        [listeners.tls]
        certfile = "/etc/tidemq/server.pem"
        cafile = "/etc/tidemq/ca.pem"
        require_client_cert = true
        cert_as_username = "CN"
        min_version = "1.3"

        [listeners.ws]
        allowed_origins = ["https://app.example"]
        compression = true
        """,
    )
    cfg = load_config(path, env=NO_ENV)
    tls = cfg.listeners.tls
    assert (tls.certfile, tls.require_client_cert, tls.cert_as_username, tls.min_version) == (
        "/etc/tidemq/server.pem",
        True,
        "cn",
        "1.3",
    )
    assert cfg.listeners.ws.allowed_origins == ("https://app.example",)
    names = [
        (item.name, item.proxy_protocol, item.tls is not None) for item in cfg.listeners.resolve()
    ]
    assert names == [("tcp:1883", True, False), ("tls:8883", True, True), ("wss:8084", True, True)]


def test_toml_written_as_dotted_keys(tmp_path: Path) -> None:
    path = write(tmp_path, '[listeners]\ntls.certfile = "a.pem"\nws = { compression = true }\n')
    cfg = load_config(path, env=NO_ENV)
    assert (cfg.listeners.tls.certfile, cfg.listeners.ws.compression) == ("a.pem", True)


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        ("[listeners.tls]\ncertfil = 'x'", r"listeners\.tls\.certfil: unknown key.*'certfile'"),
        (
            "[listeners.tcp]\nx = 1",
            r"listeners\.tcp: unknown key; \[listeners\] has .*\[listeners\.tls\]",
        ),
        ("[listeners]\ntls = 5", r"listeners\.tls: must be a table"),
        (
            "[listeners.tls]\nmin_version = '1.1'",
            r"listeners\.tls\.min_version: must be one of 1\.2, 1\.3",
        ),
        ("[listeners.tls]\nrequire_client_cert = true", r"require_client_cert needs cafile"),
        ("[listeners.tls]\ncert_as_username = 'dn'", r"cert_as_username needs cafile"),
        (
            "[listeners.ws]\nmax_frame_size = -1",
            r"listeners\.ws\.max_frame_size: must be at least 0",
        ),
        (
            "[listeners]\nlisten = ['wss://0.0.0.0:1']",
            r"listeners\.tls\.certfile: listener .* needs a certificate",
        ),
        ("[listeners]\nhandshake_timeout = 0", r"greater than 0"),
    ],
)
def test_bad_listener_settings_in_toml(tmp_path: Path, toml: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, toml), env=NO_ENV)


def test_subsections_from_environment() -> None:
    cfg = load_config(
        env={
            "TIDEMQ_LISTENERS_TLS_CERTFILE": "/srv/cert.pem",
            "TIDEMQ_LISTENERS_WS_ALLOWED_ORIGINS": "https://a.example,https://b.example",
            "TIDEMQ_LISTENERS_MAX_CONNECTIONS": "50",
        }
    )
    assert cfg.listeners.tls.certfile == "/srv/cert.pem"
    assert cfg.listeners.ws.allowed_origins == ("https://a.example", "https://b.example")
    assert cfg.listeners.max_connections == 50
    with pytest.raises(
        ConfigError, match=r"listeners\.tls\.certfiel.*'certfile'.*TIDEMQ_LISTENERS_TLS_CERTFIEL"
    ):
        load_config(env={"TIDEMQ_LISTENERS_TLS_CERTFIEL": "x"})


def test_subsections_from_flags() -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    ns = parser.parse_args(
        [
            "--listen",
            "tls://127.0.0.1:8883",
            "--listeners.tls.certfile",
            "s.pem",
            "--set",
            "listeners.ws.compression=yes",
        ]
    )
    cfg = load_config(env=NO_ENV, overrides=overrides_from_args(ns))
    assert cfg.listeners.tls.certfile == "s.pem"
    assert cfg.listeners.ws.compression is True


def test_with_values_and_to_toml_round_trip(tmp_path: Path) -> None:
    cfg = Config().with_values(
        {
            "listeners.listen": ["ws://[::]:8083/mqtt?name=web&compression=true"],
            "listeners.tls.cafile": "ca.pem",
            "listeners.tls.require_client_cert": True,
            "listeners.ws.allowed_origins": ["https://a.example"],
        }
    )
    assert cfg.listeners.tls == TLSConfig(cafile="ca.pem", require_client_cert=True)
    assert load_config(write(tmp_path, to_toml(cfg)), env=NO_ENV) == cfg


# --- URL options ---------------------------------------------------------------------------


def test_url_options_are_typed() -> None:
    url = "wss://0.0.0.0:8084/mqtt?name=web&max_connections=10&proxy_protocol=on&compression=true&allowed_origins=https://a&allowed_origins=https://b&cafile=/ca.pem"
    assert parse_listen_url(url) == ListenURL(
        "wss",
        "0.0.0.0",
        8084,
        "/mqtt",
        (
            ("name", "web"),
            ("max_connections", 10),
            ("proxy_protocol", True),
            ("compression", True),
            ("allowed_origins", ("https://a", "https://b")),
            ("cafile", "/ca.pem"),
        ),
    )


def test_url_options_override_the_sections() -> None:
    cfg = Config().with_values(
        {
            "listeners.listen": [
                "tls://0.0.0.0:8883",
                "tls://0.0.0.0:8884?name=devices&cafile=ca.pem&require_client_cert=true&cert_as_username=cn",
                "ws://0.0.0.0:8083?max_frame_size=1024&handshake_timeout=2.5",
            ],
            "listeners.tls.certfile": "server.pem",
            "listeners.max_connections": 100,
        }
    )
    public, devices, web = cfg.listeners.resolve()
    assert public.tls == TLSConfig(certfile="server.pem")
    assert devices.name == "devices"
    assert devices.tls == TLSConfig(
        certfile="server.pem", cafile="ca.pem", require_client_cert=True, cert_as_username="cn"
    )
    assert (web.path, web.max_connections, web.handshake_timeout) == ("/mqtt", 100, 2.5)
    assert web.ws is not None
    assert web.ws.max_frame_size == 1024
    assert web.tls is None


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("tcp://0.0.0.0:1?certfile=x", r"unknown option 'certfile'; a tcp:// listener takes name"),
        ("tls://0.0.0.0:1?compression=true", r"unknown option 'compression'"),
        ("ws://0.0.0.0:1?max_connection=5", r"did you mean 'max_connections'"),
        ("tcp://0.0.0.0:1?max_connections=-1", r"option max_connections: must be at least 0"),
        ("tcp://0.0.0.0:1?proxy_protocol=maybe", r"option proxy_protocol: expected a boolean"),
        ("tcp://0.0.0.0:1?max_connections=1&max_connections=2", r"given more than once"),
        ("tcp://0.0.0.0:1?name=a b", r"name must be one word"),
        ("tcp://0.0.0.0:1?junk", r"the query must be KEY=VALUE"),
        ("tcp://0.0.0.0:1#frag", r"only scheme, host, port, path and \?options"),
    ],
)
def test_bad_url_options(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_listen_url(url)
    with pytest.raises(ConfigError, match=r"listeners\.listen"):
        Config().with_values({"listeners.listen": [url]})


@pytest.mark.parametrize(
    ("urls", "match"),
    [
        (["tcp://a:1?name=x", "tcp://a:2?name=x"], r"listener name 'x' is given twice"),
        (["tcp://a:1", "ws://a:1"], r"use the same address"),
        (
            ["tls://0.0.0.0:1?certfile=s.pem&require_client_cert=true"],
            r"require_client_cert needs cafile.*listener 'tls://",
        ),
        (["tls://0.0.0.0:1"], r"listeners\.tls\.certfile: .*needs a certificate"),
    ],
)
def test_listeners_that_do_not_fit(urls: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Config().with_values({"listeners.listen": urls})


def test_certfile_in_the_url_is_enough() -> None:
    cfg = Config().with_values({"listeners.listen": ["tls://0.0.0.0:8883?certfile=own.pem"]})
    assert cfg.listeners.resolve()[0].tls == TLSConfig(certfile="own.pem")


def test_listener_spec_maps_every_option() -> None:
    cfg = Config().with_values(
        {
            "listeners.listen": [
                "wss://[::1]:0/ws?name=w&proxy_protocol=true&max_connections=3&handshake_timeout=4"
                "&cafile=ca.pem&cert_as_username=dn&min_version=1.3&ciphers=HIGH&keyfile=k.pem"
                "&allowed_origins=https://a&compression=true&max_frame_size=99"
            ],
            "listeners.tls.certfile": "s.pem",
        }
    )
    spec = listener_spec(cfg.listeners.resolve()[0])
    assert (spec.scheme, spec.host, spec.port, spec.path, spec.name) == (
        "wss",
        "::1",
        0,
        "/ws",
        "w",
    )
    assert (spec.proxy_protocol, spec.max_connections, spec.handshake_timeout) == (True, 3, 4.0)
    assert spec.tls == TLSOptions(
        certfile="s.pem",
        keyfile="k.pem",
        cafile="ca.pem",
        cert_as_username="dn",
        min_version="1.3",
        ciphers="HIGH",
    )
    assert spec.ws == WebSocketOptions(
        path="/ws", allowed_origins=("https://a",), compression=True, max_frame_size=99
    )
    assert spec.url == "wss://[::1]:0/ws"
