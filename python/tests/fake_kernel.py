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
from kpip.frames import FrameDecoder
from kpip.identity import attestation_transcript
from kpip.messages import Message, decode_message, encode_message


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    queue: list[Message] = field(default_factory=list)

    async def next(self) -> Message | None:
        while not self.queue:
            chunk = await self.reader.read(1 << 16)
            if not chunk:
                return None
            self.queue += [decode_message(f) for f in self.decoder.push(chunk)]
        return self.queue.pop(0)

    def send(self, type_: str, body: dict[str, Any], stream: int = 0) -> None:
        self.writer.write(encode_message(type_, body, stream))

    def answer(self, req: Message, status: str = "SUCCESS", **extra: Any) -> None:
        self.send("RESPONSE", {"version": 1, "id": req.body["id"], "status": status, **extra}, req.stream)


# Called for every REQUEST; may answer, drop the connection, or do nothing.
Handler = Callable[[Conn, Message], Awaitable[None]]


class FakeKernel:
    def __init__(self, handler: Handler, heartbeat_ms: int = 5000):
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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        c = Conn(reader, writer)
        self.conns.append(c)
        hello = await c.next()
        assert hello is not None and hello.type == "HELLO"
        self.sessions += 1
        body = {
            "version": 1,
            "session": f"s{self.sessions}",
            "nonce": os.urandom(32),
            "kernel": "fake",
            "heartbeatMs": self.heartbeat_ms,
            "limits": {"maxBody": 1 << 20, "maxInFlight": 16, "dedupeWindowMs": 60000},
            "features": [],
        }
        c.send("CHALLENGE", body)
        attest = await c.next()
        assert attest is not None and attest.type == "ATTEST"
        t = attestation_transcript(cbor.encode(hello.body), cbor.encode(body))
        try:
            Ed25519PublicKey.from_public_bytes(hello.body["publicKey"]).verify(attest.body["signature"], t)
            self.attested.append(True)
        except Exception:
            self.attested.append(False)
            c.send("ERROR", {"class": "AUTH", "code": "ATTESTATION_FAILED", "message": "no", "fatal": True})
            writer.close()
            return
        c.send("WELCOME", {"persona": hello.body["persona"], "handles": list(range(1, len(attest.body["tokens"]) + 1))})
        while (m := await c.next()) is not None:
            if m.type == "REQUEST":
                self.requests.append(m)
                await self.handler(c, m)
            elif m.type == "GOODBYE":
                c.send("GOODBYE", {})
                writer.close()
                return
