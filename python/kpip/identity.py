"""Persona identity files and attestation (§8.4).

An identity file is JSON, mode 0600:
``{"kpip": "identity/v1", "persona": "alice", "publicKey": "<base64url 32 bytes>",
"privateKey": "<base64url 32-byte Ed25519 seed>"}``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import IdentityError
from .grammar import is_persona_id

ATTEST_CONTEXT = b"kpip-attest-v1\0"

# Larger than any identity file (about 250 bytes): a bound, not a format (as the TypeScript client's).
IDENTITY_FILE_MAX_BYTES = 64 * 1024


def _read_regular(path: str, max_bytes: int) -> bytes:
    """The file's bytes, only if it is a regular file of at most `max_bytes` (a longer one is refused,
    never cut). O_NONBLOCK keeps the open of a FIFO from waiting for a writer."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError(f"identity file {path} is not a regular file")
        if st.st_size > max_bytes:
            raise IdentityError(f"identity file {path} is {st.st_size} bytes, over {max_bytes}")
        chunks: list[bytes] = []
        got = 0
        while True:
            b = os.read(fd, max_bytes + 1 - got)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
            got += len(b)
            # A file that grew since the fstat is refused, not cut.
            if got > max_bytes:
                raise IdentityError(f"identity file {path} is over {max_bytes} bytes")
    finally:
        os.close(fd)


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@dataclass(frozen=True)
class Identity:
    persona: str
    seed: bytes

    @property
    def _key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    @staticmethod
    def generate(persona: str) -> Identity:
        if not is_persona_id(persona):
            raise IdentityError(f"invalid persona id {persona!r}")
        return Identity(persona, os.urandom(32))

    def to_json(self) -> str:
        doc = {"kpip": "identity/v1", "persona": self.persona, "publicKey": _b64(self.public_key), "privateKey": _b64(self.seed)}
        return json.dumps(doc, indent=2) + "\n"

    def save(self, path: str) -> None:
        """Writes the identity to a new file, 0600: never over an existing file (it would keep its
        mode, perhaps readable by others) nor through a symbolic link (the key would land where
        the link points), as the kpip CLI writes secrets."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as e:
            raise IdentityError(f"cannot create identity file {path}: {e.strerror}") from None
        with os.fdopen(fd, "w") as f:
            f.write(self.to_json())

    @staticmethod
    def parse(text: str) -> Identity:
        try:
            d = json.loads(text)
        except ValueError:
            raise IdentityError("identity file is not JSON") from None
        if not isinstance(d, dict) or d.get("kpip") != "identity/v1":
            raise IdentityError('identity file must have "kpip": "identity/v1"')
        persona, priv = d.get("persona"), d.get("privateKey")
        if not isinstance(persona, str) or not is_persona_id(persona):
            raise IdentityError("identity file has an invalid persona id")
        if not isinstance(priv, str):
            raise IdentityError("identity file has no private key")
        try:
            seed = _unb64(priv)
        except ValueError:
            raise IdentityError("identity private key is not base64url") from None
        if len(seed) != 32:
            raise IdentityError("identity private key must be a 32-byte seed")
        ident = Identity(persona, seed)
        pub = d.get("publicKey")
        if isinstance(pub, str) and _unb64(pub) != ident.public_key:
            raise IdentityError("identity public key does not match its private key")
        return ident

    @staticmethod
    def load(path: str) -> Identity:
        """Reads an identity file: a regular file only, of at most 64 KiB (links followed). One handed
        over may be a FIFO (the read would wait for a writer for ever) or /dev/zero (never ending)."""
        try:
            data = _read_regular(path, IDENTITY_FILE_MAX_BYTES)
        except FileNotFoundError:
            raise IdentityError(f"identity file {path} not found") from None
        except OSError as e:
            raise IdentityError(f"cannot read identity file {path}: {e}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise IdentityError(f"identity file {path} is not UTF-8 text") from None
        return Identity.parse(text)


def attestation_transcript(hello_body: bytes, challenge_body: bytes) -> bytes:
    """79 bytes: the prefix, then SHA-256 of the exact HELLO and CHALLENGE bodies as sent."""
    return ATTEST_CONTEXT + hashlib.sha256(hello_body).digest() + hashlib.sha256(challenge_body).digest()
