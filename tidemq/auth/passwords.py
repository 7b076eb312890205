"""Password hashing and verification.

Hashes are self-describing strings, so one password file may mix them:

* ``$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH``: Argon2id (RFC 9106), the default, through
  argon2-cffi. The cost is OWASP's minimum recommendation (19 MiB, 2 passes, 1 lane), a
  few tens of milliseconds: a broker verifies a password at every CONNECT.
* ``$pbkdf2-sha512$i=210000$SALT$HASH``: PBKDF2-HMAC-SHA512 from the standard library,
  PHC string format (unpadded standard base64), 210,000 iterations (OWASP 2023).
* ``$2b$12$...``: bcrypt, through the bcrypt package. bcrypt reads at most 72 bytes of a
  password: ``hash_password`` refuses longer ones, verification looks at the first 72
  bytes as every bcrypt implementation always did.
* Mosquitto's ``mosquitto_passwd`` hashes, verified only (so its files work unchanged):
  ``$7$ITERATIONS$SALT$HASH`` is PBKDF2-HMAC-SHA512 with a 64-byte result and
  ``$6$SALT$HASH`` is SHA-512 of the password followed by the salt; both encode the raw
  salt and hash in padded standard base64.

Hash checks compare in constant time (``hmac.compare_digest``, or the libraries' own).
Verification is CPU-bound: ``verify_password_async`` runs it on a small dedicated thread
pool so the event loop keeps serving and a flood of CONNECTs cannot make the broker run
dozens of Argon2 computations (and allocate their memory) at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Final, Literal

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "Algorithm",
    "hash_password",
    "identify",
    "verify_password",
    "verify_password_async",
]

Algorithm = Literal["argon2id", "pbkdf2", "bcrypt"]
ALGORITHMS: Final[tuple[Algorithm, ...]] = ("argon2id", "pbkdf2", "bcrypt")
DEFAULT_ALGORITHM: Final[Algorithm] = "argon2id"

# OWASP Password Storage Cheat Sheet (2023): Argon2id m=19 MiB, t=2, p=1;
# PBKDF2-HMAC-SHA512 210,000 iterations; bcrypt cost 10 at least.
ARGON2_MEMORY_KIB: Final = 19_456
ARGON2_TIME_COST: Final = 2
ARGON2_PARALLELISM: Final = 1
PBKDF2_ITERATIONS: Final = 210_000
BCRYPT_ROUNDS: Final = 12
BCRYPT_MAX_BYTES: Final = 72
_SALT_BYTES: Final = 16
# Refuse absurd work factors in a file (a typo, or a file written to stall the broker).
_MAX_PBKDF2_ITERATIONS: Final = 10_000_000

_executor: ThreadPoolExecutor | None = None


def _to_bytes(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else password


def _b64(data: bytes) -> str:
    """PHC base64: the standard alphabet without padding."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    """Decode standard base64 with or without padding (PHC strings have none)."""
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def identify(encoded: str) -> str | None:
    """The scheme of a stored hash (``argon2id``, ``pbkdf2``, ``bcrypt``,
    ``mosquitto-pbkdf2``, ``mosquitto-sha512``), or None when it is not one we know
    (for example a plain-text password)."""
    if encoded.startswith("$argon2id$"):
        return "argon2id"
    if encoded.startswith("$pbkdf2-sha512$"):
        return "pbkdf2"
    if encoded.startswith(("$2b$", "$2a$", "$2y$")):
        return "bcrypt"
    if encoded.startswith("$7$") and encoded.count("$") == 4:
        return "mosquitto-pbkdf2"
    if encoded.startswith("$6$") and encoded.count("$") == 3:
        return "mosquitto-sha512"
    return None


def hash_password(password: str | bytes, algorithm: Algorithm = DEFAULT_ALGORITHM) -> str:
    """Hash *password* with a fresh random salt.

    Raises:
        ValueError: an unknown algorithm, or a password longer than 72 bytes for bcrypt.
    """
    secret = _to_bytes(password)
    if algorithm == "argon2id":
        from argon2 import PasswordHasher, Type

        hasher = PasswordHasher(
            time_cost=ARGON2_TIME_COST,
            memory_cost=ARGON2_MEMORY_KIB,
            parallelism=ARGON2_PARALLELISM,
            salt_len=_SALT_BYTES,
            type=Type.ID,
        )
        return hasher.hash(secret)
    if algorithm == "pbkdf2":
        salt = secrets.token_bytes(_SALT_BYTES)
        digest = hashlib.pbkdf2_hmac("sha512", secret, salt, PBKDF2_ITERATIONS)
        return f"$pbkdf2-sha512$i={PBKDF2_ITERATIONS}${_b64(salt)}${_b64(digest)}"
    if algorithm == "bcrypt":
        import bcrypt

        if len(secret) > BCRYPT_MAX_BYTES:
            raise ValueError(
                f"bcrypt uses at most {BCRYPT_MAX_BYTES} bytes of a password; use argon2id"
            )
        return bcrypt.hashpw(secret, bcrypt.gensalt(BCRYPT_ROUNDS)).decode("ascii")
    raise ValueError(f"unknown hash algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")


def verify_password(password: str | bytes, encoded: str) -> bool:
    """Whether *password* matches the stored hash *encoded*. An unknown or malformed hash
    never matches (it is not treated as plain text)."""
    secret = _to_bytes(password)
    try:
        scheme = identify(encoded)
        if scheme == "argon2id":
            return _verify_argon2(secret, encoded)
        if scheme == "pbkdf2":
            return _verify_pbkdf2(secret, encoded)
        if scheme == "bcrypt":
            import bcrypt

            return bool(bcrypt.checkpw(secret[:BCRYPT_MAX_BYTES], encoded.encode("ascii")))
        if scheme == "mosquitto-pbkdf2":
            _, _, iterations, salt, digest = encoded.split("$")
            rounds = int(iterations)
            if not 0 < rounds <= _MAX_PBKDF2_ITERATIONS:
                return False
            expected = base64.b64decode(digest, validate=True)
            got = hashlib.pbkdf2_hmac(
                "sha512", secret, base64.b64decode(salt, validate=True), rounds, len(expected)
            )
            return hmac.compare_digest(got, expected)
        if scheme == "mosquitto-sha512":
            _, _, salt, digest = encoded.split("$")
            got = hashlib.sha512(secret + base64.b64decode(salt, validate=True)).digest()
            return hmac.compare_digest(got, base64.b64decode(digest, validate=True))
    except (ValueError, binascii.Error, UnicodeError):
        return False
    return False


def _verify_argon2(secret: bytes, encoded: str) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return PasswordHasher().verify(encoded, secret)
    except (VerificationError, InvalidHashError):
        return False


def _verify_pbkdf2(secret: bytes, encoded: str) -> bool:
    # $pbkdf2-sha512$i=N$SALT$HASH (PHC; passlib writes $pbkdf2-sha512$N$... in its own
    # base64 alphabet, which is accepted too).
    _, _, params, salt_text, digest_text = encoded.split("$")
    if params.startswith("i="):
        rounds = int(dict(p.split("=", 1) for p in params.split(","))["i"])
    else:
        rounds = int(params)
        salt_text, digest_text = salt_text.replace(".", "+"), digest_text.replace(".", "+")
    if not 0 < rounds <= _MAX_PBKDF2_ITERATIONS:
        return False
    expected = _unb64(digest_text)
    got = hashlib.pbkdf2_hmac("sha512", secret, _unb64(salt_text), rounds, len(expected))
    return hmac.compare_digest(got, expected)


async def verify_password_async(password: str | bytes, encoded: str) -> bool:
    """``verify_password`` on the verification thread pool (at most a few at a time)."""
    global _executor
    if _executor is None:
        workers = max(1, min(4, os.cpu_count() or 1))
        _executor = ThreadPoolExecutor(workers, thread_name_prefix="tidemq-passwords")
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, verify_password, password, encoded)
