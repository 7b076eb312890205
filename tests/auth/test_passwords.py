"""Password hashes: the three TideMQ writes and the two mosquitto_passwd writes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tidemq.auth.passwords import (
    ALGORITHMS,
    hash_password,
    identify,
    verify_password,
    verify_password_async,
)

# Made by mosquitto_passwd 2.0.11: "-c -b f alice secret" ($7$, its default) and
# "-H sha512 -b f bob pw2" ($6$).
MOSQ_PBKDF2 = (
    "$7$101$gFCPWeB9KrO/BW+C$InYrxOEUdTv8Z0iQyNvQuDSBNo/5P1ofzlLsiznce5pJHeCGbDSF/aF7vYxmsAxMArrX"
    "M58sCPp3IT1wdKrsmA=="
)
MOSQ_SHA512 = (
    "$6$Rhx2Zy8KM1YcaRnM$aYCSPNRLFCflf7oxcRt4Xs8T/dec/0JL7V+n8wZzIaJOWkATL4oMNMfhhp88T0LZDRS01md8"
    "Pnxtm+MEKTjbyw=="
)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_round_trip(algorithm: str) -> None:
    encoded = hash_password("s3cret ü", algorithm)  # type: ignore[arg-type]
    assert identify(encoded) == algorithm
    assert verify_password("s3cret ü", encoded)
    assert verify_password("s3cret ü".encode(), encoded)
    assert not verify_password("s3cret u", encoded)
    assert not verify_password("", encoded)
    assert hash_password("s3cret ü", algorithm) != encoded  # a fresh salt each time  # type: ignore[arg-type]


def test_formats() -> None:
    assert hash_password("x").startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert hash_password("x", "pbkdf2").startswith("$pbkdf2-sha512$i=210000$")
    assert hash_password("x", "bcrypt").startswith("$2b$12$")
    with pytest.raises(ValueError, match="unknown hash"):
        hash_password("x", "md5")  # type: ignore[arg-type]


def test_bcrypt_length_limit() -> None:
    with pytest.raises(ValueError, match="72 bytes"):
        hash_password("x" * 73, "bcrypt")
    encoded = hash_password("y" * 72, "bcrypt")
    assert verify_password("y" * 72, encoded)
    assert verify_password("y" * 80, encoded)  # bcrypt reads 72 bytes, as it always did


def test_mosquitto_hashes() -> None:
    assert identify(MOSQ_PBKDF2) == "mosquitto-pbkdf2"
    assert identify(MOSQ_SHA512) == "mosquitto-sha512"
    assert verify_password("secret", MOSQ_PBKDF2)
    assert not verify_password("Secret", MOSQ_PBKDF2)
    assert verify_password("pw2", MOSQ_SHA512)
    assert not verify_password("pw3", MOSQ_SHA512)


def test_passlib_pbkdf2_strings() -> None:
    # passlib's own pbkdf2_sha512 format: rounds without "i=", "." for "+" in base64.
    import base64
    import hashlib

    digest = hashlib.pbkdf2_hmac("sha512", b"pw", b"saltsalt", 1000)
    ab64 = base64.b64encode(digest).decode().rstrip("=").replace("+", ".")
    encoded = f"$pbkdf2-sha512$1000$c2FsdHNhbHQ${ab64}"
    assert verify_password("pw", encoded)
    assert not verify_password("px", encoded)


@pytest.mark.parametrize(
    "encoded",
    [
        "plain-text",
        "",
        "$7$101$bad$base64!",
        "$7$0$AAAA$AAAA",
        "$7$99999999999$AAAA$AAAA",
        "$6$onlysalt",
        "$argon2id$v=19$broken",
        "$pbkdf2-sha512$i=x$AAAA$AAAA",
        "$2b$12$short",
    ],
)
def test_malformed_hashes_never_match(encoded: str) -> None:
    assert not verify_password("anything", encoded)


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="no mosquitto_passwd")
@pytest.mark.parametrize("hash_type", ["sha512-pbkdf2", "sha512"])
def test_fresh_mosquitto_passwd_hashes(tmp_path: Path, hash_type: str) -> None:
    path = tmp_path / "pw"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-H", hash_type, "-b", str(path), "u", "p@ss word"],
        check=True,
        capture_output=True,
    )
    _, encoded = path.read_text().strip().split(":", 1)
    assert verify_password("p@ss word", encoded)
    assert not verify_password("p@ss-word", encoded)


async def test_async_verification() -> None:
    encoded = hash_password("pw")
    assert await verify_password_async("pw", encoded)
    assert not await verify_password_async("px", encoded)
