"""A scripted kernel on a Unix socket, for client behaviour a real kernel will not show on cue."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kpip import cbor
from kpip.frames import FLAG_SHM, Frame, FrameDecoder, encode_frame
from kpip.identity import attestation_transcript
from kpip.messages import Message, decode_message, encode_message


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    queue: list[Message] = field(default_factory=list)
    # Takes the body of an SHM-flagged frame out of the persona's segment (tests that use shm).
    on_shm: Callable[[Frame], Frame] | None = None
    frames: list[Frame] = field(default_factory=list)  # every frame received, as it came

    async def next(self) -> Message | None:
        while not self.queue:
            chunk = await self.reader.read(1 << 16)
            if not chunk:
                return None
            for f in self.decoder.push(chunk):
                self.frames.append(f)
                if f.flags & FLAG_SHM and self.on_shm is not None:
                    f = self.on_shm(f)
                self.queue.append(decode_message(f))
        return self.queue.pop(0)

    def send(self, type_: str, body: dict[str, Any], stream: int = 0) -> None:
        self.writer.write(encode_message(type_, body, stream))

    def send_raw(self, type_: str, body: bytes, stream: int = 0, flags: int = 0) -> None:
        self.writer.write(encode_frame(type_, body, stream, flags))

    def answer(self, req: Message, status: str = "SUCCESS", **extra: Any) -> None:
        self.send("RESPONSE", {"version": 1, "id": req.body["id"], "status": status, **extra}, req.stream)


# Called for every REQUEST; may answer, drop the connection, or do nothing.
Handler = Callable[[Conn, Message], Awaitable[None]]


class FakeKernel:
    def __init__(
        self,
        handler: Handler,
        heartbeat_ms: int = 5000,
        features: list[str] | None = None,
        force_features: bool = False,
        on_shm: Callable[[Frame], Frame] | None = None,
        refuse: list[str] | None = None,
        instead: dict[str, tuple[str, dict[str, Any]]] | None = None,
        after_welcome: bytes = b"",
    ):
        # A message sent in place of "CHALLENGE" or "WELCOME" (out of order); the session then ends.
        self.instead = dict(instead or {})
        # Frames written with WELCOME, in the same write (so in the persona's read that holds it).
        self.after_welcome = after_welcome
        # Handshakes answered with a fatal RESOURCE ERROR of these codes, one each, before any is welcomed.
        self.refuse = list(refuse or [])
        # Enabled in CHALLENGE when the persona offers them (all of them with force_features).
        self.features = features or []
        self.force_features = force_features
        self.on_shm = on_shm
        self.kernel_id = f"fake-{os.getpid()}-{os.urandom(4).hex()}"
        self.max_body = 1 << 20
        self.hellos: list[Message] = []
        self.errors: list[Message] = []  # ERROR frames the persona sent (during the handshake too)
        self.dir = tempfile.mkdtemp(prefix="kpip-fake-")
        self.path = os.path.join(self.dir, "k.sock")
        self.handler = handler
        self.heartbeat_ms = heartbeat_ms
        self.sessions = 0
        self.requests: list[Message] = []
        self.attested: list[bool] = []
        self.conns: list[Conn] = []
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> FakeKernel:
        self.server = await asyncio.start_unix_server(self._serve, self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for c in self.conns:
            c.writer.close()
        os.unlink(self.path)
        os.rmdir(self.dir)
        for name in self.segments():  # the kernel's segments a test made, and anything left
            os.unlink(os.path.join("/dev/shm", name))

    def segments(self) -> list[str]:
        """This fake kernel's names in /dev/shm (kpip.<kernel id>.*)."""
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"kpip.{self.kernel_id}."))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        c = Conn(reader, writer, on_shm=self.on_shm)
        self.conns.append(c)
        hello = await c.next()
        assert hello is not None and hello.type == "HELLO"
        self.hellos.append(hello)
        self.sessions += 1
        offered = hello.body["features"]
        body = {
            "version": 1,
            "session": f"s{self.sessions}",
            "nonce": os.urandom(32),
            "kernel": self.kernel_id,
            "heartbeatMs": self.heartbeat_ms,
            "limits": {"maxBody": self.max_body, "maxInFlight": 16, "dedupeWindowMs": 60000},
            "features": [f for f in self.features if self.force_features or f in offered],
        }
        if "CHALLENGE" in self.instead:
            c.send(*self.instead["CHALLENGE"])
            await self._until_closed(c)
            return
        c.send("CHALLENGE", body)
        attest = await c.next()
        if attest is None or attest.type != "ATTEST":  # the persona gave up on the handshake
            if attest is not None and attest.type == "ERROR":
                self.errors.append(attest)
            writer.close()
            return
        t = attestation_transcript(cbor.encode(hello.body), cbor.encode(body))
        try:
            Ed25519PublicKey.from_public_bytes(hello.body["publicKey"]).verify(attest.body["signature"], t)
            self.attested.append(True)
        except Exception:
            self.attested.append(False)
            c.send("ERROR", {"class": "AUTH", "code": "ATTESTATION_FAILED", "message": "no", "fatal": True})
            writer.close()
            return
        if self.refuse:
            code = self.refuse.pop(0)
            c.send("ERROR", {"class": "RESOURCE", "code": code, "message": f"refused: {code}", "fatal": True})
            writer.close()
            return
        if "WELCOME" in self.instead:
            c.send(*self.instead["WELCOME"])
            await self._until_closed(c)
            return
        welcome = {"persona": hello.body["persona"], "handles": list(range(1, len(attest.body["tokens"]) + 1))}
        writer.write(encode_message("WELCOME", welcome) + self.after_welcome)
        while (m := await c.next()) is not None:
            if m.type == "REQUEST":
                self.requests.append(m)
                await self.handler(c, m)
            elif m.type == "ERROR":
                self.errors.append(m)
            elif m.type == "GOODBYE":
                c.send("GOODBYE", {})
                writer.close()
                return

    async def _until_closed(self, c: Conn) -> None:
        """The persona is to end the session: what it sends until it closes is read, its ERRORs kept."""
        while (m := await c.next()) is not None:
            if m.type == "ERROR":
                self.errors.append(m)
        c.writer.close()
