"""TLS for ``tls://`` and ``wss://`` listeners: server contexts, reload, and a sans-IO session.

TLS runs inside our own protocol objects over ``ssl.MemoryBIO`` (``TLSSession``) instead of
``loop.create_server(ssl=...)``, for four reasons:

- a PROXY protocol header arrives *before* the TLS handshake and must be read first;
- a failed handshake (garbage, plain MQTT on the TLS port, a missing client certificate)
  is logged with the peer's address, which asyncio's TLS transport does silently;
- the handshake gets the listener's ``handshake_timeout``;
- reloading certificates is a reference swap: ``ServerTLS.reload`` builds a fresh
  ``SSLContext`` and every *new* connection wraps itself with it, while established
  connections keep the session (and context) they started with, so nothing is dropped.

The client certificate's identity (its subject CN, or the whole subject as an RFC 4514
distinguished name) is what ``cert_as_username`` hands to the broker as the username.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "READ_SIZE",
    "ServerTLS",
    "TLSOptions",
    "TLSSession",
    "build_server_context",
    "certificate_identity",
    "distinguished_name",
]

log = logging.getLogger("tidemq.transport.tls")

#: Plaintext read per ``SSLObject.read`` call: asyncio's own read size (256 KiB), so one
#: socket read normally decrypts in one call.
READ_SIZE = 256 * 1024

_MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

CertIdentity = Literal["none", "cn", "dn"]


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """How a TLS listener presents itself and checks clients.

    Attributes:
        certfile: PEM file with the server certificate, then any intermediates.
        keyfile: PEM file with the (unencrypted) private key; empty: it is in *certfile*.
        cafile: PEM bundle of CAs that sign client certificates; empty: no client
            certificate is asked for.
        require_client_cert: refuse the handshake without a valid client certificate.
        cert_as_username: ``cn`` or ``dn`` replace the CONNECT username with the client
            certificate's common name or distinguished name; ``none`` leaves it.
        min_version: ``"1.2"`` or ``"1.3"``.
        ciphers: OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults);
            empty: Python's defaults.
        alpn: ALPN protocols offered, in preference order (``mqtt`` for MQTT over TLS,
            ``http/1.1`` for secure WebSocket). A client offering none of them still
            connects, without ALPN.
    """

    certfile: str
    keyfile: str = ""
    cafile: str = ""
    require_client_cert: bool = False
    cert_as_username: CertIdentity = "none"
    min_version: str = "1.2"
    ciphers: str = ""
    alpn: tuple[str, ...] = ("mqtt",)

    def __post_init__(self) -> None:
        if not self.certfile:
            raise ValueError("a TLS listener needs a certificate file (certfile)")
        if self.min_version not in _MIN_VERSIONS:
            raise ValueError(f"min_version must be one of {', '.join(_MIN_VERSIONS)}")
        if self.cert_as_username not in ("none", "cn", "dn"):
            raise ValueError("cert_as_username must be none, cn or dn")
        if (self.require_client_cert or self.cert_as_username != "none") and not self.cafile:
            raise ValueError("client certificates need a CA file (cafile)")


def _no_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal, blocking the event loop.
    raise ValueError("encrypted private keys are not supported; decrypt the key file")


def build_server_context(options: TLSOptions) -> ssl.SSLContext:
    """A server ``SSLContext`` from *options*; reads the files now.

    Raises:
        OSError: a file cannot be read, or OpenSSL rejects its contents (``ssl.SSLError``
            is an ``OSError``), e.g. a key that does not match the certificate.
        ValueError: bad options, or an encrypted key.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _MIN_VERSIONS[options.min_version]
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(options.certfile, options.keyfile or None, password=_no_passphrase)
    if options.ciphers:
        ctx.set_ciphers(options.ciphers)
    if options.cafile:
        ctx.load_verify_locations(cafile=options.cafile)
        ctx.verify_mode = ssl.CERT_REQUIRED if options.require_client_cert else ssl.CERT_OPTIONAL
    if options.alpn:
        ctx.set_alpn_protocols(list(options.alpn))
    return ctx


class ServerTLS:
    """A listener's current ``SSLContext``, swapped by ``reload``."""

    __slots__ = ("context", "name", "options")

    def __init__(self, options: TLSOptions, name: str = "") -> None:
        self.options = options
        self.name = name
        self.context = build_server_context(options)

    def reload(self) -> bool:
        """Re-read the certificate, key and CA files for new connections.

        Established connections keep their session. On an error the old context stays in
        use and the error is logged; returns whether the new files were loaded.
        """
        try:
            context = build_server_context(self.options)
        except (OSError, ValueError) as exc:
            log.error("listener %s: keeping the old certificates: %s", self.name, exc)
            return False
        self.context = context
        log.info("listener %s: certificates reloaded from %s", self.name, self.options.certfile)
        return True

    def session(self) -> TLSSession:
        return TLSSession(self.context)


class TLSSession:
    """One server-side TLS connection over memory buffers (no socket, no event loop).

    ``receive(data)`` takes bytes from the network and returns decrypted plaintext (empty
    during the handshake); ``encrypt(data)`` returns the records to send. After every call
    ``data_to_send()`` must be drained to the network *before* anything else is written,
    so records leave in the order OpenSSL made them.
    """

    __slots__ = ("_incoming", "_obj", "_outgoing", "eof", "handshake_done")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.handshake_done = False
        self.eof = False  # the peer sent close_notify

    def receive(self, data: bytes) -> bytes:
        """Feed network bytes; returns the plaintext they complete.

        Raises:
            ssl.SSLError: the handshake failed or a record is corrupt.
        """
        self._incoming.write(data)
        obj = self._obj
        if not self.handshake_done:
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self.handshake_done = True
        chunks: list[bytes] = []
        while True:
            try:
                chunk = obj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.eof = True
                break
            if not chunk:  # the peer's close_notify (CPython returns b"" for it)
                self.eof = True
                break
            chunks.append(chunk)
        if not chunks:
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def encrypt(self, data: bytes) -> bytes:
        """Plaintext in, TLS records out (everything pending in the outgoing buffer)."""
        self._obj.write(data)
        return self._outgoing.read()

    def data_to_send(self) -> bytes:
        return self._outgoing.read()

    def close(self) -> bytes:
        """Start a TLS shutdown; returns the close_notify alert to send."""
        try:
            self._obj.unwrap()
        except (ssl.SSLError, ValueError):
            pass  # SSLWantReadError: the peer's close_notify is not awaited
        return self._outgoing.read()

    @property
    def alpn_protocol(self) -> str | None:
        return self._obj.selected_alpn_protocol()

    @property
    def version(self) -> str | None:
        return self._obj.version()

    def peer_certificate(self) -> dict[str, Any] | None:
        """The verified client certificate (``SSLSocket.getpeercert`` form), or None."""
        if not self.handshake_done:
            return None
        cert = self._obj.getpeercert()
        return cert or None


# --- certificate identity -------------------------------------------------------------

# RFC 4514 §3 short names (and the ones OpenSSL's RFC 2253 printer uses).
_SHORT_NAMES = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _escape(value: str) -> str:
    """RFC 4514 §2.4 value escaping."""
    out = []
    for i, c in enumerate(value):
        if c in ',+"\\<>;' or (i == 0 and c in "# ") or (i == len(value) - 1 and c == " "):
            out.append("\\" + c)
        elif c == "\x00":
            out.append("\\00")
        else:
            out.append(c)
    return "".join(out)


def distinguished_name(subject: Sequence[Sequence[tuple[str, str]]]) -> str:
    """An RFC 4514 string (``CN=dev1,O=Acme,C=DE``) from a ``getpeercert()`` subject.

    The subject lists RDNs from the most significant (country) down; RFC 4514 writes them
    the other way round, as OpenSSL's ``-nameopt RFC2253`` does.
    """
    return ",".join(
        "+".join(f"{_SHORT_NAMES.get(k, k)}={_escape(v)}" for k, v in rdn)
        for rdn in reversed(subject)
    )


def certificate_identity(
    cert: dict[str, Any] | None, mode: CertIdentity
) -> tuple[str | None, str | None]:
    """(common name, identity for *mode*) of a ``getpeercert()`` dict.

    The common name is the subject's last CN (None without a certificate or a CN). The
    identity is that CN for ``cn``, the distinguished name for ``dn``, None for ``none``.
    """
    if not cert:
        return None, None
    subject = cert.get("subject", ())
    cn: str | None = None
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                cn = value
    if mode == "cn":
        return cn, cn
    if mode == "dn":
        return cn, distinguished_name(subject) or None
    return cn, None
