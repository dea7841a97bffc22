"""One transport connection carrying one session (§3.3): handshake, reader and writer."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import KernelUnavailable, KpipError, ProtocolViolation, UntrustedSocket, wire_error
from .frames import FLAG_SHM, HEADER_SIZE, Frame, FrameDecoder
from .identity import Identity, attestation_transcript
from .messages import Message, decode_message, encode_message
from .shm import SHM_FEATURE, ShmChannel, ShmError, segment_name, unavailable

# Linux's SO_PEERCRED: struct ucred {pid_t pid; uid_t uid; gid_t gid} (uid_t unsigned). Other
# systems that name SO_PEERCRED lay it out otherwise (OpenBSD: uid first): there the socket's owner
# is checked before connecting instead.
PEERCRED: int | None = getattr(socket, "SO_PEERCRED", None) if sys.platform.startswith("linux") else None
_UCRED = struct.Struct("iII")


def untrusted_owner(path: str) -> UntrustedSocket | None:
    """Why the socket at `path` is not to be trusted: it belongs to a user other than this
    process's. Only where the kernel cannot say who is connected (no SO_PEERCRED): a stat before
    the connect, which a user able to change the socket's directory can race. Root reaches every
    user's kernel and is not checked; a path that is not there is left to the connect to report."""
    me = os.geteuid()
    if me == 0:
        return None
    try:
        owner = os.stat(path).st_uid
    except OSError:
        return None
    if owner == me:
        return None
    return UntrustedSocket(
        f"the socket {path} belongs to uid {owner}, not to this user (uid {me}): a kernel's socket is its"
        " own user's, so another user put this one there; nothing was sent to it"
    )


def untrusted_peer(sock: socket.socket, path: str) -> UntrustedSocket | None:
    """Why the process connected to at `path` is not to be trusted: it runs as a user other than
    this process's or root (SO_PEERCRED, the listener's credentials, read from the connection
    itself: no socket swapped at the path after a check can pass it). Checked at every connect,
    reconnects included, before anything is sent. Root reaches every user's kernel."""
    me = os.geteuid()
    if me == 0 or PEERCRED is None:
        return None
    _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, PEERCRED, _UCRED.size))
    if uid in (me, 0):
        return None
    return UntrustedSocket(
        f"the kernel at {path} runs as uid {uid}, not as this user (uid {me}): a kernel's socket is its own"
        " user's, so another user listens there; nothing was sent to it"
    )


SUPPORTED_VERSIONS = (1,)
CLIENT_NAME = "kpip-python/0.1.0"
# The least maxBody a session may have (§8.3): every control message and FAILURE fits in it.
MIN_MAX_BODY = 4096
# The largest frame bodies before WELCOME (§8.8), the kernel's bounds on its unauthenticated peers
# applied to the kernel: a fake or faulty one cannot make the client buffer a session's maxBody.
HANDSHAKE_HELLO_MAX_BODY = 16 * 1024
HANDSHAKE_ATTEST_MAX_BODY = 1024 * 1024


@dataclass
class Session:
    """What the handshake settled (CHALLENGE and WELCOME)."""

    version: int
    session_id: str
    kernel_id: str
    heartbeat_ms: int
    max_body: int
    max_in_flight: int
    dedupe_window_ms: int
    handles: list[int]
    refused: list[dict[str, Any]] = field(default_factory=list)
    features: list[str] = field(default_factory=list)


def welcome_fault(w: dict[str, Any], persona: str, tokens_sent: int) -> str | None:
    """What breaks §6.6 in a WELCOME answering a HELLO for `persona` and an ATTEST of
    `tokens_sent` tokens, or None. A session acting as another persona than the one this client
    signed for; fewer handles than tokens (a held token left unbound without a word) or more
    (handles no token of this client's stands behind); one handle named for two tokens; a
    refusal of a token never presented, of one bound, or twice: each would have the client act
    on what is not so."""
    handles: list[int] = w["handles"]
    if w["persona"] != persona:
        return f"for persona {w['persona']!r}, not {persona!r} as HELLO said"
    if len(handles) != tokens_sent:
        return f"with {len(handles)} handle(s) for the {tokens_sent} token(s) ATTEST presented"
    bound = [h for h in handles if h != 0]
    if len(set(bound)) != len(bound):
        return f"naming one handle for two tokens: {handles}"
    named: set[int] = set()
    for r in w.get("refused", []):
        index = r["index"]
        if index >= tokens_sent:
            return f"refusing token {index}, of the {tokens_sent} ATTEST presented"
        if handles[index] != 0:
            return f"refusing token {index}, which it bound as handle {handles[index]}"
        if index in named:
            return f"refusing token {index} twice"
        named.add(index)
    return None


MIN_PING_INTERVAL = 0.05
"""Seconds between two PINGs at the least, whatever heartbeatMs the kernel sets (the TypeScript
client ticks every 50 ms): a kernel setting heartbeatMs 1 made this loop PING and wake 2,000
times a second."""

MIN_HEARTBEAT_MS = 100
"""The shortest heartbeat interval (§8.5): a CHALLENGE's heartbeatMs of 1..99 is taken as this."""


def heartbeat_interval(announced: int) -> int:
    """The heartbeat kept for a CHALLENGE's heartbeatMs (§8.5): 0 is none, else at least
    MIN_HEARTBEAT_MS. At 0 this client PINGed every 50 ms and called the kernel dead after 50 ms
    of quiet (3 x 0), reconnecting over and over."""
    return 0 if announced == 0 else max(announced, MIN_HEARTBEAT_MS)


def ping_interval(heartbeat_ms: int) -> float:
    """Seconds between PINGs: half the kept heartbeat (§8.5), never under MIN_PING_INTERVAL."""
    return max(heartbeat_interval(heartbeat_ms) / 2000, MIN_PING_INTERVAL)


class Link:
    """A Unix-socket connection; `on_message` gets every frame after WELCOME, `on_lost` the end."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.last_seen = time.monotonic()
        self.session: Session | None = None
        self.dead = False
        # The kernel said GOODBYE (§8.6): its answers still come, nothing new is sent on it.
        self.closing = False
        self._task: asyncio.Task[None] | None = None
        self._last_body = b""
        self.shm: ShmChannel | None = None  # once the kernel enabled "shm" (§3.7)
        self.shm_unavailable: str | None = None  # why "shm" was not offered, when it was wanted

    @staticmethod
    async def open(path: str) -> Link:
        # Asked of the connection where it can say who listens; else of the socket file beforehand.
        if PEERCRED is None and (untrusted := untrusted_owner(path)) is not None:
            raise untrusted
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
        except OSError as e:
            raise KernelUnavailable(f"no kernel at {path}: {e.strerror or e}") from e
        if PEERCRED is not None and (untrusted := untrusted_peer(writer.get_extra_info("socket"), path)) is not None:
            writer.close()
            raise untrusted
        return Link(reader, writer)

    def write(self, data: bytes) -> None:
        if not self.dead:
            self.writer.write(data)

    def unsent(self) -> int:
        """Bytes written on this connection that the kernel has not taken yet."""
        return 0 if self.dead else self.writer.transport.get_write_buffer_size()

    def send_frame(self, frame: bytes) -> None:
        """Writes a frame, its body through shared memory when it is large enough (§3.7)."""
        self.write(frame if self.shm is None or self.dead else self.shm.wrap(frame))

    def _message(self, f: Frame) -> Message:
        """A frame as a message, its body first taken out of shared memory if it is there."""
        if f.flags & FLAG_SHM:
            if self.shm is None:
                raise ShmError("SHM_NOT_NEGOTIATED", "frame flags set on a session without the shm feature")
            f = self.shm.unwrap(f)
        return decode_message(f)

    def refuse(self, e: KpipError) -> ProtocolViolation:
        """The kernel sent something malformed: say so in a fatal ERROR (§8.7); the caller closes."""
        code = e.code or "MALFORMED"
        self._fatal_protocol(code, e.message)
        return ProtocolViolation(f"kernel sent a malformed frame or message: {e}", code)

    def violation(self, message: str, code: str = "UNEXPECTED_MESSAGE") -> ProtocolViolation:
        """The kernel sent a message out of order (§8.1) or broke a handshake rule (§6.4, §8.3):
        refused as the kernel refuses a peer that does, in a fatal PROTOCOL ERROR naming `code`
        (§8.7); the caller closes."""
        self._fatal_protocol(code, message)
        return ProtocolViolation(message, code)

    def _fatal_protocol(self, code: str, message: str) -> None:
        self.write(encode_message("ERROR", {"class": "PROTOCOL", "code": code, "message": message[:1024], "fatal": True}))

    async def _next(self) -> Message:
        """The next message during the handshake (no reader task yet)."""
        while True:
            # Taken one at a time: each frame is checked against the limit the one before it left.
            f = self.decoder.next()
            if f is not None:
                self._last_body = f.body
                try:
                    return self._message(f)
                except ShmError as e:
                    raise self.refuse(e) from e
            chunk = await self.reader.read(1 << 16)
            if not chunk:
                raise KernelUnavailable("the kernel closed the connection during the handshake")
            self.last_seen = time.monotonic()
            self.decoder.feed(chunk)

    async def handshake(
        self, identity: Identity, instance: bytes, tokens: list[bytes], max_body: int | None, shm_threshold: int | None = None
    ) -> Session:
        """HELLO → CHALLENGE → ATTEST → WELCOME (§8.2). Raises KpipError for a refusal.

        `shm_threshold` (None: off) offers "shm" when /dev/shm is usable: bodies above it then
        travel through shared memory, both ways."""
        offer_shm = False
        if shm_threshold is not None:
            self.shm_unavailable = unavailable()
            offer_shm = self.shm_unavailable is None
        hello_body: dict[str, Any] = {
            "versions": list(SUPPORTED_VERSIONS),
            "persona": identity.persona,
            "publicKey": identity.public_key,
            "instance": instance,
            "features": [SHM_FEATURE] if offer_shm else [],
            "client": CLIENT_NAME,
        }
        if max_body is not None:
            hello_body["maxBody"] = max_body
        hello = encode_message("HELLO", hello_body)
        self.decoder.max_body = min(HANDSHAKE_HELLO_MAX_BODY, max_body if max_body is not None else HANDSHAKE_HELLO_MAX_BODY)
        self.write(hello)
        m = await self._expect("CHALLENGE")
        c = m.body
        if c["version"] not in SUPPORTED_VERSIONS:
            raise self.violation(f"kernel chose version {c['version']}, which this client did not offer", "UNSUPPORTED_VERSION")
        if any(f != SHM_FEATURE or not offer_shm for f in c["features"]):
            raise self.violation(f"kernel enabled features {c['features']} this client did not offer", "BAD_FIELD")
        granted = c["limits"]["maxBody"]
        # §8.3: the kernel answers min(its own maximum, HELLO.maxBody), at least MIN_MAX_BODY. A larger
        # one would have this client buffer (and, with shm, reserve) more than it agreed to.
        if granted < MIN_MAX_BODY or (max_body is not None and granted > max_body):
            raise self.violation(
                f"kernel set maxBody {granted}, outside {MIN_MAX_BODY}..{max_body if max_body is not None else 'its own maximum'}",
                "BAD_FIELD",
            )
        self.decoder.max_body = min(HANDSHAKE_ATTEST_MAX_BODY, granted)
        if SHM_FEATURE in c["features"]:
            assert shm_threshold is not None
            own, peer = (segment_name(c["kernel"], c["session"], side) for side in ("p", "k"))
            self.shm = ShmChannel(own, peer, c["limits"]["maxBody"], shm_threshold)
        # The transcript covers the exact bodies as sent on the wire (§8.4).
        signature = identity.sign(attestation_transcript(hello[HEADER_SIZE:], self._last_body))
        self.write(encode_message("ATTEST", {"signature": signature, "tokens": tokens}))
        w = (await self._expect("WELCOME")).body
        if (wrong := welcome_fault(w, identity.persona, len(tokens))) is not None:
            raise self.violation(f"kernel sent WELCOME {wrong}", "BAD_FIELD")
        self.decoder.max_body = granted
        limits = c["limits"]
        self.session = Session(
            c["version"],
            c["session"],
            c["kernel"],
            heartbeat_interval(c["heartbeatMs"]),
            limits["maxBody"],
            limits["maxInFlight"],
            limits["dedupeWindowMs"],
            list(w["handles"]),
            list(w.get("refused", [])),
            list(c["features"]),
        )
        return self.session

    async def _expect(self, type_: str) -> Message:
        m = await self._next()
        if m.type == "ERROR":
            b = m.body
            raise wire_error(b["class"], b["message"], b["code"])
        if m.type != type_:
            raise self.violation(f"expected {type_} from the kernel, got {m.type}")
        return m

    def start(self, on_message: Callable[[Message], None], on_lost: Callable[[Exception], None]) -> None:
        """After WELCOME: read frames in a task until the connection ends."""
        # What came in the read that held WELCOME, each frame checked against the session's maxBody.
        try:
            while not self.dead and (f := self.decoder.next()) is not None:
                on_message(self._message(f))
        except KpipError as e:
            err = self.refuse(e)
            on_lost(err)
            return
        self._task = asyncio.get_running_loop().create_task(self._read(on_message, on_lost))

    async def _read(self, on_message: Callable[[Message], None], on_lost: Callable[[Exception], None]) -> None:
        err: Exception = KernelUnavailable("the kernel closed the connection")
        try:
            while not self.dead:
                chunk = await self.reader.read(1 << 16)
                if not chunk:
                    break
                self.last_seen = time.monotonic()
                self.decoder.feed(chunk)
                while (f := self.decoder.next()) is not None:
                    on_message(self._message(f))
                    if self.dead:
                        return
        except KpipError as e:
            err = self.refuse(e)
        except (OSError, asyncio.IncompleteReadError) as e:
            err = KernelUnavailable(f"connection to the kernel failed: {e}")
        except asyncio.CancelledError:
            return
        if not self.dead:
            on_lost(err)

    async def heartbeat(self, on_dead: Callable[[Exception], None]) -> None:
        """PING every heartbeat/2; a kernel silent for 3 heartbeats is dead (§8.5). None at heartbeatMs 0."""
        assert self.session is not None
        if self.session.heartbeat_ms == 0:
            return
        hb = self.session.heartbeat_ms / 1000
        seq = 0
        while not self.dead:
            await asyncio.sleep(ping_interval(self.session.heartbeat_ms))
            if self.dead:
                return
            if time.monotonic() - self.last_seen > 3 * hb:
                on_dead(KernelUnavailable(f"kernel silent for more than {3 * hb:.1f} s"))
                return
            seq += 1
            self.write(encode_message("PING", {"seq": seq}))

    def close(self) -> None:
        if self.dead:
            return
        self.dead = True
        if self.shm is not None:
            self.shm.close()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        try:
            self.writer.close()
        except RuntimeError:
            pass  # loop already closed


def new_instance_id() -> bytes:
    return os.urandom(16)
