"""The asyncio persona client, in the spirit of @kpip/client (see python/README.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from .calls import Backoff, CallTable, Held, Pending, Result
from .errors import (
    HANDSHAKE_RETRY_CODES,
    RETRYABLE,
    AuthError,
    Cancelled,
    DeadlineExceeded,
    FrameError,
    KernelUnavailable,
    KpipError,
    ProtocolViolation,
    TokenRefreshFailed,
    UntrustedSocket,
    wire_error,
)
from .frames import HEADER_SIZE
from .identity import Identity
from .intent import encode_intent
from .link import Link, Session, new_instance_id
from .messages import Message, encode_message
from .refresh import TokenRefresher
from .shm import DEFAULT_THRESHOLD
from .subscription import DEFAULT_BUFFER_BYTES, Subscription, Subscriptions
from .tokens import Token, b64url_decode, decode_token

#: Bytes written and not yet taken by the kernel past which a PING is not answered.
PONG_BACKLOG = 64 * 1024

#: What a reconnect's connect and handshake fail with when the kernel is away, refuses or
#: misbehaves: tried again. Any other exception is a bug and ends the client (see _reconnect_loop).
RECONNECTABLE = (KernelUnavailable, UntrustedSocket, ProtocolViolation, KpipError, OSError, EOFError)


class Client:
    """One persona's connection to a kernel, kept alive across kernel restarts.

    Use :meth:`connect`. Every call carries a request id that a retry or a resend after a
    reconnect keeps, so the kernel answers it once (§11)."""

    def __init__(
        self,
        socket: str,
        identity: Identity | str,
        tokens: Sequence[bytes | str] = (),
        *,
        workspace: str | None = None,
        reconnect: bool = True,
        connect_timeout: float = 10.0,
        wait_for_kernel: bool = False,
        unavailable_timeout: float = 30.0,
        max_attempts: int = 4,
        retry_backoff: Backoff = Backoff(0.02, 1.0),
        reconnect_backoff: Backoff = Backoff(0.1, 5.0),
        refresh_margin: float = 60.0,
        max_body: int | None = None,
        shm: bool = True,
        shm_threshold: int = DEFAULT_THRESHOLD,
    ):
        self.socket = socket
        self.identity = identity if isinstance(identity, Identity) else Identity.load(identity)
        self.persona = self.identity.persona
        self.workspace = workspace
        self.instance = new_instance_id()
        self.state = "connecting"
        self.session: Session | None = None
        self.connections = 0
        self._held = [Held(t if isinstance(t, bytes) else _text_token(t), decode_token(t)) for t in tokens]
        self._tokens = TokenRefresher(self, refresh_margin)
        self._o = dict(
            reconnect=reconnect,
            connect_timeout=connect_timeout,
            wait=wait_for_kernel,
            unavailable=unavailable_timeout,
            max_attempts=max_attempts,
            max_body=max_body,
            shm=shm_threshold if shm else None,
        )
        self._retry = retry_backoff
        self._reconnect_backoff = reconnect_backoff
        self._link: Link | None = None
        self._goodbye = ""  # the reason of the kernel's last GOODBYE
        self._calls = CallTable()
        self._subs = Subscriptions(self)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconnecting: asyncio.Task[None] | None = None
        self._attempt = 0
        self.refresh_error: TokenRefreshFailed | None = None  # raised by the next call, then cleared
        self._closed_error: Exception | None = None
        self._closing: asyncio.Future[None] | None = None  # done when the first close() is
        self.last_error: Exception | None = None  # why the last session ended or reconnect failed

    @classmethod
    async def connect(cls, socket: str, identity: Identity | str, tokens: Sequence[bytes | str] = (), **kw: Any) -> Client:
        c = cls(socket, identity, tokens, **kw)
        await c._first_connect()
        return c

    # ---- public state -----------------------------------------------------------------

    @property
    def session_id(self) -> str | None:
        return self.session.session_id if self.session else None

    @property
    def handles(self) -> list[int]:
        return [h.handle for h in self._held if h.handle > 0]

    @property
    def held_tokens(self) -> list[Token]:
        return [h.token for h in self._held]

    @property
    def refused_tokens(self) -> list[dict[str, Any]]:
        return self.session.refused if self.session else []

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    @property
    def features(self) -> list[str]:
        """Features the kernel enabled on the current session (e.g. "shm")."""
        return self.session.features if self.session else []

    @property
    def shm_frames(self) -> dict[str, int]:
        """Frames of the current session that went through shared memory, each way."""
        shm = self._link.shm if self._link is not None else None
        return {"sent": shm.sent if shm else 0, "received": shm.received if shm else 0}

    # ---- connecting -------------------------------------------------------------------

    async def _first_connect(self) -> None:
        end = time.monotonic() + self._o["connect_timeout"]
        attempt = 0
        refused: KpipError | None = None
        while True:
            try:
                await self._establish(max(0.1, end - time.monotonic()))
                break
            except KernelUnavailable:
                if not self._o["wait"] or time.monotonic() >= end:
                    self.state = "closed"
                    # Out of time after a refusal being retried: the kernel's typed answer says more.
                    if refused is not None:
                        raise refused from None
                    raise
            except KpipError as e:
                # A kernel shedding half-open handshakes, or bounding how fast a persona tree opens
                # sessions, asks for another try (§8.8): within the connect timeout, as the reconnect loop does.
                if e.code not in HANDSHAKE_RETRY_CODES or time.monotonic() >= end:
                    self.state = "closed"
                    raise
                refused = e
            await asyncio.sleep(min(self._reconnect_backoff.delay(attempt), max(0.0, end - time.monotonic())))
            attempt += 1
        for h in self._held:
            self._tokens.schedule(h)

    async def _establish(self, timeout: float) -> None:
        self.state = "connecting" if self.connections == 0 else "reconnecting"
        try:
            link = await asyncio.wait_for(Link.open(self.socket), timeout)
        except asyncio.TimeoutError:
            raise KernelUnavailable(f"no answer from {self.socket} within {timeout:.1f} s") from None
        try:
            tokens = [h.raw for h in self._held]
            handshake = link.handshake(self.identity, self.instance, tokens, self._o["max_body"], self._o["shm"])
            session = await asyncio.wait_for(handshake, timeout)
        except asyncio.TimeoutError:
            link.close()
            raise KernelUnavailable(f"handshake with {self.socket} took longer than {timeout:.1f} s") from None
        except BaseException:
            link.close()
            raise
        for h, handle in zip(self._held, session.handles):
            h.handle = handle
        self.session = session
        self._link = link
        self.connections += 1
        self.state = "ready"
        link.start(lambda m: self._on_message(link, m), lambda e: self._on_lost(link, e))
        self.spawn(link.heartbeat(lambda e: self._on_lost(link, e)))
        self._flush()
        if self.connections > 1:
            self.spawn(self._subs.renew())

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def _on_lost(self, link: Link, err: Exception) -> None:
        if link.dead:
            return
        self.last_error = err
        link.close()
        if link is not self._link:
            return
        self._link = None
        loop = asyncio.get_running_loop()
        for p in self._calls.all():
            self._calls.mark_sent(p, False)
            if p.deadline is None and p.timer is None:
                p.timer = loop.call_later(self._o["unavailable"], self._unavailable, p)
        if isinstance(err, AuthError) or not self._o["reconnect"] or self.state in ("closing", "closed"):
            self._shutdown(err)
            return
        if self._reconnecting is None:
            self.state = "reconnecting"
            self._reconnecting = self.spawn(self._reconnect_loop())

    def _unavailable(self, p: Pending) -> None:
        self._calls.settle(p, error=KernelUnavailable(f"kernel unavailable for {self._o['unavailable']} s"))

    async def _reconnect_loop(self) -> None:
        try:
            while self.state == "reconnecting":
                await asyncio.sleep(self._reconnect_backoff.delay(self._attempt))
                self._attempt += 1
                try:
                    await self._establish(self._o["connect_timeout"])
                    # A flapping kernel must not reset the backoff: only a connection that stays up does.
                    link = self._link
                    asyncio.get_running_loop().call_later(5.0, self._healthy, link)
                except AuthError as e:
                    self.last_error = e
                    self._shutdown(e)  # the persona can no longer attest: retrying cannot help
                # What a connect and handshake fail with is retried: no kernel or a dead connection
                # (KernelUnavailable, OSError, EOFError), another user's socket at the path
                # (UntrustedSocket: refused at each try, nothing sent), a kernel's refusal or a
                # malformed or out-of-order message (KpipError, ProtocolViolation).
                except RECONNECTABLE as e:
                    self.last_error = e
                    if self.state != "closed":
                        self.state = "reconnecting"
                # Anything else is a bug, here or in what the client was given: retrying it would only
                # show as "reconnecting" for ever. It ends the client, raised to every waiting call.
                except Exception as e:
                    self.last_error = e
                    self._shutdown(e)
        finally:
            self._reconnecting = None

    def _healthy(self, link: Link | None) -> None:
        if link is not None and link is self._link and not link.dead:
            self._attempt = 0

    # ---- incoming ---------------------------------------------------------------------

    def _on_message(self, link: Link, m: Message) -> None:
        b = m.body
        if m.type == "RESPONSE":
            p = self._calls.get(m.stream)
            if p is not None and p.id == b["id"]:
                self._on_response(p, b)
            if link.closing:
                self._end_if_answered(link)
        elif m.type == "EVENT":
            self._subs.deliver(b, m.size)
        elif m.type == "PING":
            # Not queued behind bytes the kernel has not read: a kernel that PINGs and never reads
            # would grow them without end. Once it reads again, its next PING is answered.
            if link.unsent() < PONG_BACKLOG:
                link.write(encode_message("PONG", {"seq": b["seq"]}))
        elif m.type == "PONG":
            pass
        elif m.type == "GOODBYE":
            # The kernel is leaving (§8.6): nothing new goes out on this session (calls wait for
            # the next one); what was sent is still answered, then the session ends. A second
            # GOODBYE is ignored.
            if not link.closing:
                link.closing = True
                self._goodbye = str(b.get("reason", ""))
                self._end_if_answered(link)
        elif m.type == "ERROR":
            if b["fatal"]:
                if b["code"] in ("TOO_LARGE", "SHM_TOO_LARGE") and link is self._link:
                    self._refuse_largest(link)
                self._on_lost(link, wire_error(b["class"], b["message"], b["code"], b.get("id")))
        else:
            # Out of order (§8.1): the kernel is told why in a fatal PROTOCOL ERROR, as the TypeScript client does.
            self._on_lost(link, link.violation(f"unexpected {m.type} from the kernel"))

    def _refuse_largest(self, link: Link) -> None:
        """The kernel ended the session over a frame too large: the largest request sent on it. That
        one fails now and is never resent (§12: it would end every session it is sent on); the
        others are resent on the next session."""
        p = self._calls.largest_sent()
        if p is None:
            return
        assert link.session is not None
        limit = link.session.max_body
        self._calls.settle(
            p, error=FrameError("TOO_LARGE", f"the kernel refused a request of {p.size} bytes as too large (maxBody {limit})")
        )

    def _end_if_answered(self, link: Link) -> None:
        """A closing link whose sent calls are all answered is done: the next session takes the rest."""
        if self._calls.sent_count == 0:
            self._on_lost(link, KernelUnavailable(f"the kernel said goodbye: {self._goodbye}"))

    def _on_response(self, p: Pending, r: dict[str, Any]) -> None:
        if r["status"] == "FAILURE":
            cls = r["error"]
            if cls in RETRYABLE and p.attempts < self._o["max_attempts"]:
                delay = self._retry.delay(p.attempts)
                if p.deadline is None or time.monotonic() + delay < p.deadline:
                    p.attempts += 1
                    self._calls.mark_sent(p, False)
                    asyncio.get_running_loop().call_later(delay, self._send, p)
                    return
            if cls == "AUTH" and not p.auth_retried and self._link is not None:
                p.auth_retried = True  # one fresh handshake and attestation, then the same request
                self._on_lost(self._link, KernelUnavailable("re-attesting after AUTH"))
                return
        self._calls.settle(p, r)

    # ---- calls ------------------------------------------------------------------------

    async def request(
        self,
        op: str,
        target: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        caps: list[int | bytes] | None = None,
        workspace: str | None = None,
        traceparent: str | None = None,
    ) -> dict[str, Any]:
        """Sends one intent; returns the RESPONSE body, FAILURE included (after retries).

        `timeout` (seconds) travels in the intent as an absolute deadline, so the kernel stops
        the work too. Cancelling the awaiting task abandons the call (a late answer is dropped)."""
        if self.state in ("closing", "closed"):
            raise KernelUnavailable(f"client is {self.state}")
        if self.refresh_error is not None:
            err, self.refresh_error = self.refresh_error, None
            raise err
        intent: dict[str, Any] = {"op": op, "target": target, "args": args or {}}
        deadline = None
        if timeout is not None:
            deadline = time.monotonic() + timeout
            intent["constraints"] = {"deadline": int((time.time() + timeout) * 1000)}
        raw = encode_intent(intent)  # encoded once: retries and resends carry the same bytes
        context: dict[str, Any] = {"persona": self.persona}
        if workspace or self.workspace:
            context["workspace"] = workspace or self.workspace
        if traceparent:
            context["traceparent"] = traceparent
        p = self._calls.open(raw, context, caps, deadline)
        if self.state != "ready" and deadline is None:
            p.timer = asyncio.get_running_loop().call_later(self._o["unavailable"], self._unavailable, p)
        self._send(p)
        try:
            return await asyncio.wait_for(asyncio.shield(p.future), None if deadline is None else deadline - time.monotonic())
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"no answer within {timeout} s") from None
        finally:
            self._calls.drop(p)

    async def call(self, op: str, target: str, args: dict[str, Any] | None = None, **kw: Any) -> Result:
        """Like :meth:`request`, but a FAILURE raises the typed error of its class."""
        r = await self.request(op, target, args, **kw)
        if r["status"] == "FAILURE":
            raise wire_error(r["error"], r.get("message", "request failed"), None, r["id"], r.get("payload"))
        return Result(r["status"], r.get("payload"))

    def _send(self, p: Pending) -> None:
        link = self._link
        if not self._calls.holds(p) or p.sent or link is None or link.dead or link.closing or self.state != "ready":
            return
        assert link.session is not None
        body = {
            "version": link.session.version,
            "persona": self.persona,
            "id": p.id,
            "intent": p.intent,
            "context": p.context,
            "caps": p.caps if p.caps is not None else self.handles,
        }
        try:
            frame = encode_message("REQUEST", body, p.stream)
        except KpipError as e:
            # Refused before sending (a context or cap outside §6.7): the call ends here, with the
            # error, rather than staying in the table to be resent, and refused, at every session.
            self._calls.settle(p, error=e)
            return
        p.size = len(frame) - HEADER_SIZE
        if p.size > link.session.max_body:
            self._calls.settle(p, error=FrameError("TOO_LARGE", f"request body exceeds the session's maxBody {link.session.max_body}"))
            return
        self._calls.mark_sent(p, True)
        link.send_frame(frame)

    def _flush(self) -> None:
        for p in self._calls.all():
            if not p.sent:
                if p.deadline is None and p.timer is not None:
                    p.timer.cancel()
                    p.timer = None
                self._send(p)

    # ---- events, tokens, deferred ops ------------------------------------------------

    async def subscribe(
        self,
        pattern: str,
        *,
        buffer: int = 1000,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        timeout: float | None = None,
    ) -> Subscription:
        """Events on topic:// names matching `pattern`; renewed after every reconnect. At most
        `buffer` events and `buffer_bytes` bytes of them wait for the reader (the newest always);
        past either the oldest are dropped into the next event's ``gap``."""
        return await self._subs.subscribe(pattern, buffer, timeout, buffer_bytes)

    async def bind(self, token: bytes | str) -> int:
        """Binds a token on this session (token.bind) and holds it for every later session."""
        raw = token if isinstance(token, bytes) else _text_token(token)
        t = decode_token(raw)
        r = await self.call("token.bind", f"token://{t.id}", {"token": raw}, caps=[raw])
        h = Held(raw, t, r.field("token.bind", "handle", "handle"))
        self._held.append(h)
        self._tokens.schedule(h)
        return h.handle

    async def wait_op(self, op: str, *, timeout: float | None = None, poll: Backoff = Backoff(0.05, 1.0)) -> Result:
        """Awaits a DEFERRED op's final result (op.result on op://<id>, §9.4).

        Returns its SUCCESS; a failed or cancelled op raises the typed error of its class."""
        end = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise DeadlineExceeded(f"{op} did not finish within {timeout} s")
            r = await self.call("op.result", op, timeout=left)
            if r.status != "DEFERRED":
                return r
            attempt += 1
            await asyncio.sleep(max(poll.initial, poll.delay(attempt)))

    # ---- closing ----------------------------------------------------------------------

    async def close(self, drain: float = 5.0) -> None:
        """Waits (up to `drain` s) for calls in flight, says GOODBYE, and closes."""
        if self.state == "closed":
            return
        if self._closing is not None:  # a close under way: wait for it, one GOODBYE
            await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        closing = self._closing
        try:
            await self._close(drain)
        finally:
            if self.state != "closed":  # this close was cancelled: the next one starts afresh
                self._closing = None
            closing.set_result(None)

    async def _close(self, drain: float) -> None:
        self.state = "closing"
        end = time.monotonic() + drain
        while len(self._calls) and self._link is not None and time.monotonic() < end:
            await asyncio.sleep(0.01)
        link = self._link
        if link is not None and not link.dead:
            link.write(encode_message("GOODBYE", {"reason": "client closing"}))
            try:
                await asyncio.wait_for(link.writer.drain(), 1.0)
            except (asyncio.TimeoutError, OSError):
                pass
        self._shutdown(Cancelled("client closed"))

    def _shutdown(self, err: Exception) -> None:
        self.state = "closed"
        self._closed_error = err
        if self._link is not None:
            self._link.close()
            self._link = None
        for p in self._calls.all():
            self._calls.settle(p, error=err)
        self._subs.end_all()
        for t in list(self._tasks):
            if t is not asyncio.current_task():
                t.cancel()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _text_token(s: str) -> bytes:
    return b64url_decode(s)
