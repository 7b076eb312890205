"""tidemq.config: defaults, TOML → environment → flags precedence, coercion, errors, docs."""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from tidemq.config import (
    Config,
    ConfigError,
    LimitsConfig,
    ListenURL,
    add_arguments,
    example_toml,
    load_config,
    main,
    overrides_from_args,
    parse_listen_url,
    render_markdown,
    to_toml,
)

ROOT = Path(__file__).resolve().parent.parent
NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tidemq.toml"
    path.write_text(text)
    return str(path)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    return parser.parse_args(argv)


def all_keys() -> list[tuple[str, str]]:
    """(dotted section, key) of every setting; sub-sections (``listeners.tls``) included."""
    out: list[tuple[str, str]] = []

    def visit(section: str, value: object) -> None:
        for key in dataclasses.fields(value):  # type: ignore[arg-type]
            child = getattr(value, key.name)
            if dataclasses.is_dataclass(child):
                visit(f"{section}.{key.name}", child)
            else:
                out.append((section, key.name))

    for section in dataclasses.fields(Config):
        visit(section.name, getattr(Config(), section.name))
    return out


# --- defaults -----------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = load_config(env=NO_ENV)
    assert cfg == Config()
    assert cfg.node.name.startswith("tidemq@")
    assert cfg.node.data_dir == "./data"
    assert cfg.listeners.listen == ("tcp://0.0.0.0:1883",)
    lim = cfg.limits
    assert lim.max_packet_size == 1_048_576
    assert lim.max_connections == 100_000
    assert lim.max_inflight == 32
    assert lim.max_queued_messages == 1000
    assert lim.queue_qos0 is True
    assert lim.max_topic_levels == 128
    assert lim.max_client_id_length == 65535
    assert lim.max_subscriptions_per_client == 0
    assert lim.max_awaiting_rel == 100
    assert lim.await_rel_timeout == 300.0
    assert lim.max_keepalive == 65535
    assert lim.connect_timeout == 15.0
    assert lim.topic_alias_maximum == 65535
    assert lim.max_qos == 2
    assert lim.retain_available
    assert lim.wildcard_subscription_available
    assert lim.shared_subscription_available
    assert lim.default_session_expiry == 7200
    assert lim.max_session_expiry == 0xFFFF_FFFF
    assert lim.retry_interval == 30.0
    assert lim.message_expiry_max == 0
    assert cfg.mqtt.allow_anonymous is True
    assert cfg.mqtt.shared_subscription_strategy == "round_robin"
    assert cfg.mqtt.assign_topic_aliases is True
    assert cfg.mqtt.sys_interval == 10.0
    assert (cfg.storage.backend, cfg.storage.url, cfg.storage.durability) == ("sqlite", "", "sync")
    assert (cfg.log.level, cfg.log.format) == ("info", "text")


def test_max_packet_size_ceiling_is_the_protocols() -> None:
    from tidemq.protocol import PROTOCOL_MAX_PACKET_SIZE

    LimitsConfig(max_packet_size=PROTOCOL_MAX_PACKET_SIZE)
    with pytest.raises(ConfigError):
        LimitsConfig(max_packet_size=PROTOCOL_MAX_PACKET_SIZE + 1)


def test_sections_are_frozen_and_replaceable() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.limits.max_qos = 1  # type: ignore[misc]
    smaller = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, max_qos=1))
    assert smaller.limits.max_qos == 1
    assert cfg.limits.max_qos == 2
    # replace validates and normalises too.
    with pytest.raises(ConfigError, match=r"limits\.max_qos"):
        dataclasses.replace(cfg.limits, max_qos=3)
    assert dataclasses.replace(cfg.limits, connect_timeout=5).connect_timeout == 5.0
    assert isinstance(dataclasses.replace(cfg.limits, connect_timeout=5).connect_timeout, float)


def test_with_values() -> None:
    cfg = Config().with_values({"limits.max_inflight": 2, "mqtt.allow_anonymous": "no"})
    assert cfg.limits.max_inflight == 2
    assert cfg.mqtt.allow_anonymous is False
    with pytest.raises(ConfigError, match=r"limits\.max_inflight"):
        Config().with_values({"limits.max_inflight": 0})
    with pytest.raises(ConfigError, match="max_infligt"):
        Config().with_values({"limits.max_infligt": 2})


# --- sources and precedence ---------------------------------------------------------------


def test_toml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [node]
        name = "n1"
        [listeners]
        listen = ["tcp://127.0.0.1:1884", "tcp://[::1]:1885"]
        [limits]
        max_packet_size = 2048
        connect_timeout = 3
        retry_interval = 0.5
        queue_qos0 = false
        [mqtt]
        shared_subscription_strategy = "sticky"
        """,
    )
    cfg = load_config(path, env=NO_ENV)
    assert cfg.node.name == "n1"
    assert cfg.listeners.listen == ("tcp://127.0.0.1:1884", "tcp://[::1]:1885")
    assert cfg.limits.max_packet_size == 2048
    assert cfg.limits.connect_timeout == 3.0
    assert isinstance(cfg.limits.connect_timeout, float)
    assert cfg.limits.retry_interval == 0.5
    assert cfg.limits.queue_qos0 is False
    assert cfg.mqtt.shared_subscription_strategy == "sticky"
    assert cfg.limits.max_inflight == 32  # untouched keys keep their defaults


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_qos = 1\n")
    assert load_config(env={"TIDEMQ_CONFIG": path}).limits.max_qos == 1


def test_env_beats_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_packet_size = 4096\nmax_inflight = 10\n")
    cfg = load_config(path, env={"TIDEMQ_LIMITS_MAX_PACKET_SIZE": "2048", "HOME": "/x"})
    assert cfg.limits.max_packet_size == 2048
    assert cfg.limits.max_inflight == 10


def test_flag_beats_env(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_packet_size = 4096\n")
    env = {"TIDEMQ_LIMITS_MAX_PACKET_SIZE": "2048", "TIDEMQ_LIMITS_MAX_QOS": "1"}
    ns = parse("--limits.max-packet-size", "1024")
    cfg = load_config(path, env=env, overrides=overrides_from_args(ns))
    assert cfg.limits.max_packet_size == 1024
    assert cfg.limits.max_qos == 1


def test_set_flag_and_precedence_among_flags() -> None:
    ns = parse("--set", "limits.max_qos=0", "--set", "log.level=DEBUG", "--limits.max-qos", "1")
    overrides = overrides_from_args(ns)
    assert overrides == {"limits.max_qos": "1", "log.level": "DEBUG"}
    cfg = load_config(env=NO_ENV, overrides=overrides)
    assert (cfg.limits.max_qos, cfg.log.level) == (1, "debug")
    # --set accepts the dashed spelling of the key as well.
    assert overrides_from_args(parse("--set", "limits.max-qos=0")) == {"limits.max_qos": "0"}


def test_no_flags_no_overrides() -> None:
    ns = parse()
    assert overrides_from_args(ns) == {}
    assert ns.config is None


def test_config_and_data_dir_aliases(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\ndata_dir = "/var/lib/a"\n')
    ns = parse("--config", path, "--data-dir", "/srv/b")
    cfg = load_config(ns.config, env=NO_ENV, overrides=overrides_from_args(ns))
    assert cfg.node.data_dir == "/srv/b"
    assert overrides_from_args(parse("--node.data-dir", "c")) == {"node.data_dir": "c"}


def test_listen_is_repeatable_and_replaces_the_list(tmp_path: Path) -> None:
    path = write(tmp_path, '[listeners]\nlisten = ["tcp://0.0.0.0:1"]\n')
    ns = parse("--listen", "tcp://127.0.0.1:1883", "--listen", "ws://[::]:8083/mqtt")
    cfg = load_config(path, env=NO_ENV, overrides=overrides_from_args(ns))
    assert cfg.listeners.listen == ("tcp://127.0.0.1:1883", "ws://[::]:8083/mqtt")
    # The long form is the same flag; a comma-separated value counts as several URLs.
    ns = parse("--listeners.listen", "tcp://a:1,tcp://b:2", "--listen", "tcp://c:3")
    cfg = load_config(env=NO_ENV, overrides=overrides_from_args(ns))
    assert cfg.listeners.listen == ("tcp://a:1", "tcp://b:2", "tcp://c:3")


# --- coercion -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        (" false ", False),
        ("0", False),
        ("No", False),
        ("off", False),
    ],
)
def test_bool_from_string(text: str, value: bool) -> None:
    cfg = load_config(env={"TIDEMQ_MQTT_ALLOW_ANONYMOUS": text})
    assert cfg.mqtt.allow_anonymous is value


def test_numbers_and_choices_from_strings() -> None:
    env = {
        "TIDEMQ_LIMITS_MAX_CONNECTIONS": "1_000",
        "TIDEMQ_LIMITS_CONNECT_TIMEOUT": "2.5",
        "TIDEMQ_LIMITS_AWAIT_REL_TIMEOUT": "60",
        "TIDEMQ_LOG_LEVEL": "INFO",
    }
    cfg = load_config(env=env)
    assert cfg.limits.max_connections == 1000
    assert cfg.limits.connect_timeout == 2.5
    assert cfg.limits.await_rel_timeout == 60.0
    assert cfg.log.level == "info"


@pytest.mark.parametrize(
    ("text", "urls"),
    [
        ("tcp://a:1", ("tcp://a:1",)),
        ("tcp://a:1, tcp://b:2,", ("tcp://a:1", "tcp://b:2")),
        ('["tcp://a:1", "ws://b:2/mqtt"]', ("tcp://a:1", "ws://b:2/mqtt")),
    ],
)
def test_list_from_env(text: str, urls: tuple[str, ...]) -> None:
    assert load_config(env={"TIDEMQ_LISTENERS_LISTEN": text}).listeners.listen == urls


def test_other_env_vars_are_ignored() -> None:
    env = {"PATH": "/bin", "TIDEMQ_TEST_REDIS_URL": "redis://x", "tidemq_limits_max_qos": "9"}
    assert load_config(env=env) == Config()


def test_build_switches_are_not_config() -> None:
    # setup.py's TIDEMQ_MYPYC and TIDEMQ_NO_EXTENSIONS may stay exported in the shell that
    # runs the broker; TIDEMQ_NO_EXTENSIONS also turns the C WebSocket scanner off then.
    env = {"TIDEMQ_MYPYC": "1", "TIDEMQ_NO_EXTENSIONS": "1"}
    assert load_config(env=env) == Config()
    with pytest.raises(ConfigError, match="TIDEMQ_NO_EXTENSION"):
        load_config(env={"TIDEMQ_NO_EXTENSION": "1"})


# --- errors -------------------------------------------------------------------------------


def test_unknown_key_in_toml_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_paket_size = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=NO_ENV)
    message = str(info.value)
    assert "limits.max_paket_size" in message
    assert "max_packet_size" in message  # the suggestion
    assert path in message
    assert info.value.key == "limits.max_paket_size"


def test_unknown_section_in_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[limit]\nmax_qos = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[limit\].*'limits'"):
        load_config(path, env=NO_ENV)
    path = write(tmp_path, "limits = 3\n")
    with pytest.raises(ConfigError, match="must be a table"):
        load_config(path, env=NO_ENV)


def test_unknown_env_var_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="TIDEMQ_LIMITS_MAX_QOZ") as info:
        load_config(env={"TIDEMQ_LIMITS_MAX_QOZ": "1"})
    assert "max_qos" in str(info.value)
    with pytest.raises(ConfigError, match="TIDEMQ_LIMIT_MAX_QOS"):
        load_config(env={"TIDEMQ_LIMIT_MAX_QOS": "1"})


def test_unknown_override_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'limits\.nope'"):
        load_config(env=NO_ENV, overrides={"limits.nope": "1"})
    with pytest.raises(ConfigError, match=r"SECTION\.KEY"):
        load_config(env=NO_ENV, overrides={"max_qos": "1"})


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        ("[limits]\nmax_qos = 3", r"limits\.max_qos: must be from 0 to 2, got 3"),
        ("[limits]\nmax_qos = true", r"limits\.max_qos: expected an integer, got boolean true"),
        ('[limits]\nmax_qos = "1"', r"limits\.max_qos: expected an integer, got string \"1\""),
        ("[limits]\nmax_packet_size = 1.5", r"expected an integer, got float 1\.5"),
        ("[limits]\nmax_inflight = 0", r"limits\.max_inflight: must be from 1 to 65535"),
        ("[limits]\nmax_client_id_length = 22", r"from 23 to 65535"),
        ("[limits]\nconnect_timeout = 0", r"limits\.connect_timeout: must be greater than 0"),
        ("[limits]\nconnect_timeout = inf", r"must be a finite number"),
        ("[limits]\nmax_connections = -1", r"must be at least 0, got -1"),
        ('[limits]\nretain_available = "yes"', r"expected a boolean, got string"),
        ('[mqtt]\nshared_subscription_strategy = "fair"', r"must be one of round_robin, random"),
        ('[log]\nlevel = "verbose"', r"log\.level: must be one of"),
        ("[listeners]\nlisten = []", r"at least one listener"),
        ('[listeners]\nlisten = "tcp://a:1"', r"expected a list of strings, got string"),
        ("[listeners]\nlisten = [1883]", r"expected a list of strings, got array \[1883\]"),
        ('[listeners]\nlisten = ["udp://a:1"]', r"the scheme must be one of tcp://"),
        ('[listeners]\nlisten = ["tcp://0.0.0.0"]', r"no port"),
        ('[listeners]\nlisten = ["tcp://a:99999"]', r"bad listener URL"),
        ('[listeners]\nlisten = ["tcp://a:1/mqtt"]', r"only allowed for ws"),
        ('[listeners]\nlisten = ["tcp://a:1", "tcp://a:1"]', r"given twice"),
        ('[node]\nname = "a b"', r"node\.name: must be a non-empty name"),
        ('[node]\ndata_dir = ""', r"node\.data_dir: must not be empty"),
        (
            "[limits]\ndefault_session_expiry = 100\nmax_session_expiry = 10",
            r"limits\.default_session_expiry: 100 exceeds limits\.max_session_expiry",
        ),
    ],
)
def test_bad_values_in_toml(tmp_path: Path, toml: str, match: str) -> None:
    path = write(tmp_path, toml + "\n")
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path, env=NO_ENV)
    assert f"(from config file {path})" in str(info.value)


def test_bad_values_from_env_name_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"TIDEMQ_LIMITS_MAX_PACKET_SIZE": "1MB"})
    assert str(info.value) == (
        "limits.max_packet_size: expected an integer, got '1MB' "
        "(from environment variable TIDEMQ_LIMITS_MAX_PACKET_SIZE)"
    )
    with pytest.raises(ConfigError, match=r"expected a boolean .* got 'maybe'"):
        load_config(env={"TIDEMQ_MQTT_ALLOW_ANONYMOUS": "maybe"})
    with pytest.raises(ConfigError, match=r"must be a finite number"):
        load_config(env={"TIDEMQ_LIMITS_RETRY_INTERVAL": "nan"})


def test_cross_check_names_the_source() -> None:
    env = {"TIDEMQ_LIMITS_DEFAULT_SESSION_EXPIRY": "10", "TIDEMQ_LIMITS_MAX_SESSION_EXPIRY": "5"}
    with pytest.raises(ConfigError, match=r"from environment variable TIDEMQ_LIMITS_DEFAULT_SE"):
        load_config(env=env)


def test_bad_values_from_overrides() -> None:
    with pytest.raises(ConfigError, match=r"limits\.max_qos: must be from 0 to 2.*override"):
        load_config(env=NO_ENV, overrides={"limits.max_qos": "7"})


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "missing.toml"), env=NO_ENV)
    path = write(tmp_path, "[limits\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path, env=NO_ENV)


@pytest.mark.parametrize(
    "argv",
    [
        ("--limits.max-qos", "3"),
        ("--limits.max-packet-size", "big"),
        ("--mqtt.allow-anonymous", "maybe"),
        ("--log.level", "loud"),
        ("--set", "limits.max_qos"),
        ("--set", "limits.nope=1"),
        ("--set", "limits.max_qos=5"),
    ],
)
def test_bad_flags_fail_at_parse_time(argv: tuple[str, ...]) -> None:
    with pytest.raises(argparse.ArgumentError):
        parse(*argv)


def test_bad_listen_flag_fails_at_load() -> None:
    ns = parse("--listen", "udp://a:1")
    with pytest.raises(ConfigError, match=r"listeners\.listen: bad listener URL"):
        load_config(env=NO_ENV, overrides=overrides_from_args(ns))


def test_parse_listen_url() -> None:
    assert parse_listen_url("tcp://0.0.0.0:1883") == ListenURL("tcp", "0.0.0.0", 1883, "")
    assert parse_listen_url("wss://[::]:8084/mqtt") == ListenURL("wss", "::", 8084, "/mqtt")
    with pytest.raises(ValueError, match="no host"):
        parse_listen_url("tcp://:1883")


# --- generated files ----------------------------------------------------------------------


def test_docs_are_generated_from_the_code() -> None:
    """docs/config.md is exactly what `python -m tidemq.config --markdown` prints."""
    assert (ROOT / "docs" / "config.md").read_text() == render_markdown(), (
        "docs/config.md is stale: python -m tidemq.config --markdown > docs/config.md"
    )


def test_example_file_is_generated_from_the_code() -> None:
    assert (ROOT / "tidemq" / "default.toml").read_text() == example_toml(), (
        "tidemq/default.toml is stale: python -m tidemq.config --example > tidemq/default.toml"
    )


def test_every_key_is_documented() -> None:
    example = (ROOT / "tidemq" / "default.toml").read_text()
    docs = (ROOT / "docs" / "config.md").read_text()
    sections = re.split(r"^\[([\w.]+)\]$", example, flags=re.MULTILINE)
    by_section = dict(zip(sections[1::2], sections[2::2], strict=True))
    for section, key in all_keys():
        assert re.search(rf"^(# )?{key} = ", by_section[section], re.MULTILINE), (section, key)
        env = f"TIDEMQ_{section.replace('.', '_').upper()}_{key.upper()}"
        assert f"`{env}`" in docs
        assert f"`--{section}.{key.replace('_', '-')}`" in docs


def test_example_file_loads_to_the_defaults() -> None:
    path = ROOT / "tidemq" / "default.toml"
    assert load_config(str(path), env=NO_ENV) == Config()
    commented = re.sub(r"^# (listen = |\s+\")", r"\1", path.read_text(), flags=re.MULTILINE)
    # The commented-out listener lines for TLS and WebSocket are valid too.
    data = tomllib.loads(commented.replace('listen = ["tcp://0.0.0.0:1883"]\n', "", 1))
    assert data["listeners"]["listen"] == [
        "tcp://0.0.0.0:1883",
        "tls://0.0.0.0:8883",
        "ws://0.0.0.0:8083/mqtt",
        "wss://0.0.0.0:8084/mqtt",
    ]
    Config().with_values(
        {"listeners.listen": data["listeners"]["listen"], "listeners.tls.certfile": "server.pem"}
    )


def test_to_toml_round_trips(tmp_path: Path) -> None:
    cfg = Config().with_values(
        {
            "node.data_dir": 'odd "dir"\\ é\t\x01',
            "node.name": "n@h",
            "limits.retry_interval": 0.25,
            "log.format": "json",
        }
    )
    path = write(tmp_path, to_toml(cfg))
    assert load_config(path, env=NO_ENV) == cfg


def test_module_main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["--markdown"]) == 0
    assert capsys.readouterr().out == render_markdown()
    assert main(["--example"]) == 0
    assert capsys.readouterr().out == example_toml()
    monkeypatch.setenv("TIDEMQ_LIMITS_MAX_QOS", "1")
    assert main(["--log.level", "info"]) == 0
    out = capsys.readouterr().out
    assert "max_qos = 1\n" in out
    assert 'level = "info"\n' in out
    monkeypatch.setenv("TIDEMQ_LIMITS_MAX_QOS", "9")
    assert main([]) == 2
    assert "TIDEMQ_LIMITS_MAX_QOS" in capsys.readouterr().err
