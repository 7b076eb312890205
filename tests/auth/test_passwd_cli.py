"""``tidemq passwd``: mosquitto_passwd's options (-c, -b, -D, -U, -H)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidemq.auth.password_file import parse_password_file
from tidemq.auth.passwords import identify, verify_password
from tidemq.cli import main


def users(path: Path) -> dict[str, str]:
    return parse_password_file(path.read_text()).users


def test_create_prompts_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["s3cret", "s3cret"])
    prompts: list[str] = []

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("getpass.getpass", getpass)
    path = tmp_path / "passwd"
    assert main(["passwd", "-c", str(path), "alice"]) == 0
    assert prompts == ["Password: ", "Reenter password: "]
    encoded = users(path)["alice"]
    assert identify(encoded) == "argon2id"
    assert verify_password("s3cret", encoded)
    assert path.stat().st_mode & 0o777 == 0o600


def test_mismatch_and_empty_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "passwd"
    answers = iter(["one", "two", "", ""])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert main(["passwd", "-c", str(path), "alice"]) == 1
    assert "do not match" in capsys.readouterr().err
    assert main(["passwd", "-c", str(path), "alice"]) == 1
    assert "empty password" in capsys.readouterr().err
    assert not path.exists()


def test_batch_add_update_delete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "passwd"
    assert main(["passwd", "-c", "-b", str(path), "alice", "a1"]) == 0
    assert main(["passwd", "-b", "-H", "bcrypt", str(path), "bob", "b1"]) == 0
    assert main(["passwd", "-b", "--hash", "pbkdf2", str(path), "alice", "a2"]) == 0
    found = users(path)
    assert list(found) == ["alice", "bob"]
    assert identify(found["alice"]) == "pbkdf2"
    assert verify_password("a2", found["alice"])
    assert identify(found["bob"]) == "bcrypt"
    assert verify_password("b1", found["bob"])
    assert main(["passwd", "-D", str(path), "alice"]) == 0
    assert list(users(path)) == ["bob"]
    assert main(["passwd", "-D", str(path), "alice"]) == 1
    assert "not in" in capsys.readouterr().err
    # -c overwrites, as mosquitto_passwd -c does.
    assert main(["passwd", "-c", "-b", str(path), "carol", "c"]) == 0
    assert list(users(path)) == ["carol"]


def test_upgrade_hashes_plain_text_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    mosq = (
        "$6$Rhx2Zy8KM1YcaRnM$aYCSPNRLFCflf7oxcRt4Xs8T/dec/0JL7V+n8wZzIaJOWkATL4oMNMfhhp88T0LZDRS01"
        "md8Pnxtm+MEKTjbyw=="
    )
    path.write_text(f"# migrated from mosquitto\nold:plain pw\nbob:{mosq}\n")
    assert main(["passwd", "-U", "-H", "pbkdf2", str(path)]) == 0
    text = path.read_text()
    assert text.startswith("# migrated from mosquitto\nold:$pbkdf2-sha512$")
    assert verify_password("plain pw", users(path)["old"])
    assert users(path)["bob"] == mosq


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["passwd", "FILE"], "a username is needed"),
        (["passwd", "FILE", "u", "pw"], "-b needs"),
        (["passwd", "-b", "FILE", "u"], "-b needs"),
        (["passwd", "-U", "FILE", "u"], "-U takes only the file"),
        (["passwd", "-b", "FILE", "u:x", "pw"], "may not contain"),
        (["passwd", "-b", "FILE", "u", "pw"], "does not exist"),
    ],
)
def test_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [str(tmp_path / "pw") if a == "FILE" else a for a in argv]
    if "u:x" in argv:
        (tmp_path / "pw").write_text("")
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_a_broken_file_is_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pw"
    path.write_text("no colon here\n")
    assert main(["passwd", "-b", str(path), "u", "pw"]) == 1
    assert "pw:1: expected USERNAME:HASH" in capsys.readouterr().err
    assert path.read_text() == "no colon here\n"
