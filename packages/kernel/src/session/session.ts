import { randomBytes, randomUUID } from "node:crypto";
import {
  type CborMap,
  type CodecError,
  type ErrorClass,
  encodeMeasurements,
  type Frame,
  FrameReader,
  framePieces,
  HANDSHAKE_MAX_BODY,
  HEADER_SIZE,
  type Hello,
  type Message,
  peerDecodeLimits,
  type Request,
  type Response,
  SHM_FEATURE,
  ShmPeer,
  shmSegmentName,
  writeMessage,
  writePieces,
} from "@kpip/protocol";
import { SessionRecords } from "../audit/session-records.js";
import type { EventSink } from "../events/bus.js";
import type { SessionView } from "../pipeline/pipeline.js";
import { isStorageFull, STORAGE_FULL_UNRECORDED } from "../store/storage-full.js";
import { addressOf, type Connection, originOf } from "./connection.js";
import { CONTROL_FRAME_RATE, ControlRate } from "./control-rate.js";
import { HandleTable } from "./handles.js";
import { attestationFailure, challengeFrame, negotiateHello, welcomeMessage } from "./handshake.js";
import type { SessionHostOf } from "./host.js";
import { peerKey } from "./peer-key.js";
import { sameRegistration } from "./persona-keys.js";
import { READ_HOLD_MS, ReadGauge } from "./read-gauge.js";

/** What a session needs from the kernel that owns it. */
export type SessionHost = SessionHostOf<Session>;

export type { SessionLimitsConfig } from "./host.js";

export type SessionState = "hello" | "attest" | "ready" | "closing" | "closed";

/**
 * One connection's session: framing, handshake and attestation, heartbeats, requests in
 * flight, and shutdown. Responses go only to this session's connection.
 */
export class Session implements SessionView, EventSink {
  readonly id = randomUUID();
  readonly createdAt = Date.now();
  state: SessionState = "hello";
  persona = "";
  version = 0;
  instance = "";
  /** The persona tree it counts in (the kernel's sessions registry sets it at attestation). */
  tree: string | undefined;
  /** The negotiated maximum body (PROTOCOL §4.5, §8.3): enforced on every frame both ways once CHALLENGE is sent. */
  maxBody: number;
  /** The public key the persona attested with (a re-registration under another key ends the session). */
  attestedKey: Buffer | undefined;
  /** EventSink: when the registration it attested under was made (kernel events about an earlier holder's work are not its). */
  registeredAt: number | undefined;
  /** The offline journal's stamp when the registration was last found standing ({@link registrationLost}). */
  private stampChecked: string | undefined;
  inFlight = 0;
  /** Set when the kernel ends the session because its persona lost the right to attest ({@link expel}). */
  identityLost: string | undefined;
  readonly handles = new HandleTable();
  /** This session's lifecycle records (open, close, fatal errors, answers withheld). */
  private readonly records: SessionRecords;
  /**
   * When the session began and when its peer last sent anything, on the monotonic clock
   * (performance.now), as {@link tick} judges them: on the host's wall clock, a step back of D
   * (NTP, `date -s`, a VM resumed) put the handshake timeout and the dead-peer check D late.
   */
  private readonly openedAt = performance.now();
  private lastSeen = this.openedAt;
  private pingSeq = 0;
  /** The last tick found the peer silent past its limit (see tick). */
  private silentAtLastTick = false;
  private hello: { body: Hello; bytes: Buffer } | undefined;
  private challengeBytes: Buffer | undefined;
  private nonce: Buffer | undefined;
  /** Frames in, the same reader as the client's (shared-memory bodies taken out of the peer's segment). */
  private readonly reader: FrameReader;
  /** This connection's reads that brought little and completed no frame (see {@link ReadGauge}). */
  readonly reads = new ReadGauge();
  /** Control frames after WELCOME (PING, PONG, GOODBYE, non-fatal ERROR): a bounded rate ({@link ControlRate}). */
  private readonly control: ControlRate;
  private readonly abort = new AbortController();
  private drained: (() => void) | undefined;
  /** The kernel began this session's closing (its stop), not the peer's GOODBYE: see {@link stopping}. */
  private drainedByKernel = false;
  /** The session's shared-memory channel, when "shm" was negotiated. */
  get shm(): ShmPeer | undefined {
    return this.reader.shm;
  }
  /**
   * The peer's address as far as the transport knows it ("" on the Unix socket), as the
   * pre-auth bounds count it ({@link peerKey}: an IPv6 address by its /64).
   */
  readonly peerKey: string;

  constructor(
    readonly conn: Connection,
    private readonly host: SessionHost,
  ) {
    this.peerKey = conn.peerKey ?? peerKey(addressOf(conn));
    // Where it comes from, taken at the first record that says so (the peer process read then, or at HELLO).
    this.records = new SessionRecords(host.audit, this.id, () => originOf(conn), host.liveSessions);
    this.maxBody = host.limits.maxBodyBytes;
    this.control = new ControlRate(host.limits.controlFrameRate ?? CONTROL_FRAME_RATE, this.openedAt);
    this.reader = new FrameReader(Math.min(HANDSHAKE_MAX_BODY.hello, host.limits.maxBodyBytes), this.bodyMemory, this.bodyBack);
    // A body holds no more items than its message type needs: decoding costs per item.
    this.reader.decodeLimits = peerDecodeLimits;
    conn.onData((chunk) => this.onData(chunk));
    conn.onClose(() => this.closed("connection closed"));
    conn.onDrain(() => this.host.sessionDrained(this));
    conn.onEnd?.(() => this.peerEnded());
    // Cut after the session ended: a line of the peer's (rate-limited), not a record (the session's end already is one).
    conn.onCut?.((e) => this.logPeer("info", { err: e.name, graceMs: e.graceMs }, e.message));
    // The transport ended the stream for what the peer sent (gRPC: a message over its limit): on
    // the record as the fatal error it is, as an oversized frame on the socket is, not a plain close.
    conn.onRefused?.((e) => this.fail(e.errorClass, e.code, e.message, this.persona || this.hello?.body.persona));
  }

  /** The peer half-closed (gRPC): a ready session ends as after GOODBYE; a handshake simply ends. */
  private peerEnded(): void {
    if (this.state === "ready") {
      this.state = "closing";
      this.maybeFinishClosing();
    } else if (this.state === "hello" || this.state === "attest") {
      this.closed("peer ended the stream");
      this.conn.end();
    }
  }

  /** After GOODBYE: requests are refused (the pipeline's admission), those in flight answered. */
  get closing(): boolean {
    return this.state === "closing";
  }

  /** Closing because the kernel drains it for its stop ({@link drain}), the peer having said nothing. */
  get stopping(): boolean {
    return this.state === "closing" && this.drainedByKernel;
  }

  get signal(): AbortSignal {
    return this.abort.signal;
  }

  get transport(): string {
    return this.conn.transport;
  }

  get buffered(): number {
    return this.conn.buffered;
  }

  /** The frame being received: its bytes so far, and the memory held for them. */
  get partialFrame(): { received: number; retained: number } {
    return this.reader.partial;
  }

  /**
   * EventSink: an EVENT frame for this session (dropped once it is closed), counted with what
   * is queued unread like an answer: past maxWriteBuffer, or its tree's hard bound, the session ends.
   */
  write(frame: Uint8Array): void {
    if (this.state === "closed") return;
    this.conn.write(this.shm ? this.shm.wrap(frame) : frame);
    this.dropIfNotReading();
  }

  /** EventSink: an EVENT frame given as pieces (a large event's shared bytes by reference), as {@link write}. */
  writePieces(pieces: Uint8Array[]): void {
    if (this.state === "closed") return;
    writePieces(this.conn, pieces, this.shm);
    this.dropIfNotReading();
  }

  /** EventSink: may an EVENT of `bytes` be queued to the peer, within its tree's unread bytes? */
  room(bytes: number): boolean {
    return this.host.eventRoom?.(this, bytes) ?? true;
  }

  /** A large body's memory: the pool's once attested (a peer still handshaking gets fresh memory, as it never gives any back). */
  private readonly bodyMemory = (n: number): Buffer =>
    this.state === "ready" || this.state === "closing"
      ? (this.host.bodies?.take(n) ?? Buffer.allocUnsafe(n))
      : Buffer.allocUnsafe(n);

  /** A body that failed its checks before any op saw it: its slab goes back to the pool. */
  private readonly bodyBack = (body: Uint8Array): void => this.host.bodies?.giveBack(body);

  private onData(chunk: Uint8Array): void {
    try {
      this.receive(chunk);
    } catch (e) {
      // A bug must cost one session, never the kernel.
      this.logPeer("error", { err: e }, "session failed on unexpected error");
      this.fail("INTERNAL", "INTERNAL_ERROR", "the kernel failed to process this session's input", this.persona || undefined);
    }
  }

  private receive(chunk: Uint8Array): void {
    if (this.state === "closed") return;
    this.lastSeen = performance.now();
    let frames = 0;
    // Frames the kernel pays for (not control frames): only they start the read count again.
    let paid = 0;
    this.reader.push(
      chunk,
      (msg, frame) => {
        frames++;
        if (msg.type === "REQUEST" || msg.type === "HELLO" || msg.type === "ATTEST") paid++;
        this.onMessage(msg, frame);
        return (this.state as SessionState) !== "closed";
      },
      (e) => this.fatal(e),
    );
    // A read that brought a frame no nearer, past a frame's allowance: the next one waits.
    if (this.reads.read(chunk.length, frames, paid) && (this.state as SessionState) !== "closed") {
      const ms = this.host.limits.readHoldMs ?? READ_HOLD_MS;
      if (ms > 0 && this.conn.holdReads) {
        this.reads.held++;
        this.conn.holdReads(ms);
      }
    }
    // After GOODBYE the kernel closes only once it has processed every frame it already read
    // (PROTOCOL §8.6): a REQUEST that came in the same read is answered, not dropped.
    this.maybeFinishClosing();
  }

  private onMessage(msg: Message, frame: Frame): void {
    switch (msg.type) {
      case "HELLO":
        if (this.state !== "hello") return this.outOfOrder(msg.type);
        return this.onHello(msg.body, frame.body);
      case "ATTEST":
        if (this.state !== "attest") return this.outOfOrder(msg.type);
        return this.onAttest(msg.body.signature, msg.body.tokens, msg.body.measurements);
      case "REQUEST":
        // A closing session's requests go through too: admission refuses them, on the record.
        if (this.state === "ready" || this.state === "closing") return this.onRequest(msg.body, frame.stream);
        return this.outOfOrder(msg.type);
      case "PING":
        if (this.state === "hello" || this.state === "attest") return this.outOfOrder(msg.type);
        if (!this.control.take(this.lastSeen)) return this.controlFlood();
        this.send({ type: "PONG", body: { seq: msg.body.seq } });
        // A PONG is queued like an answer: a peer that PINGs and never reads is dropped alike.
        this.dropIfNotReading();
        return;
      case "PONG":
        // The kernel PINGs only ready sessions: a PONG before that is out of order too.
        if (this.state === "hello" || this.state === "attest") return this.outOfOrder(msg.type);
        if (!this.control.take(this.lastSeen)) return this.controlFlood();
        return;
      case "GOODBYE":
        if (this.state === "closing") {
          // A second GOODBYE is ignored (§8.6), within the control-frame rate.
          if (!this.control.take(this.lastSeen)) this.controlFlood();
          return;
        }
        if (this.state !== "ready") return this.outOfOrder(msg.type);
        this.state = "closing";
        return;
      case "ERROR":
        // Before HELLO only HELLO is allowed; during the handshake a peer may only give up (fatal).
        if (this.state === "hello" || (this.state === "attest" && !msg.body.fatal)) return this.outOfOrder(msg.type);
        if (!msg.body.fatal && !this.control.take(this.lastSeen)) return this.controlFlood();
        this.logPeer("info", { code: msg.body.code, class: msg.body.class }, "peer reported an error");
        if (msg.body.fatal) {
          // Nothing more to say to a peer that ended the session: its connection goes now.
          this.closed("peer reported a fatal error");
          this.conn.destroy();
        }
        return;
      default:
        return this.outOfOrder(msg.type);
    }
  }

  private onHello(body: Hello, bytes: Uint8Array): void {
    // The peer process, read now (an admitted connection's first HELLO, its socket open) for the
    // session.open or session.handshake record to come: a shed connection, or one that never says HELLO, costs none.
    void this.conn.process;
    const negotiated = negotiateHello(body);
    if (!("version" in negotiated)) return this.fail("PROTOCOL", negotiated.code, negotiated.message, body.persona);
    const version = negotiated.version;
    this.version = version;
    this.hello = { body, bytes: Buffer.from(bytes) };
    this.instance = Buffer.from(body.instance).toString("hex");
    this.nonce = randomBytes(32);
    const lim = this.host.limits;
    const maxBody = Math.min(lim.maxBodyBytes, body.maxBody ?? lim.maxBodyBytes);
    this.maxBody = maxBody;
    this.conn.limitMessages?.(HEADER_SIZE + maxBody);
    // Shared memory only between local peers on the Unix socket, and only if both want it.
    const shm = this.host.shm;
    if (shm && this.conn.transport === "uds" && body.features.includes(SHM_FEATURE)) {
      this.reader.shm = new ShmPeer(shm.native, {
        ownName: shmSegmentName(this.host.kernelId, this.id, "k"),
        peerName: shmSegmentName(this.host.kernelId, this.id, "p"),
        maxBody,
        threshold: shm.threshold,
        alloc: this.bodyMemory,
        release: this.bodyBack,
        grow: shm.grow && ((bytes) => shm.grow?.(this, bytes) ?? true),
        freed: shm.freed && (() => shm.freed?.(this)),
      });
    }
    const frame = challengeFrame(
      { version, session: this.id, nonce: this.nonce, kernel: this.host.kernelId, maxBody, shm: this.shm !== undefined },
      lim,
    );
    this.challengeBytes = Buffer.from(frame.subarray(HEADER_SIZE));
    this.state = "attest";
    this.reader.setMaxBody(Math.min(HANDSHAKE_MAX_BODY.attest, maxBody));
    this.conn.write(frame);
  }

  private onAttest(signature: Uint8Array, tokens: Uint8Array[], measurements: CborMap | undefined): void {
    const hello = this.hello as { body: Hello; bytes: Buffer };
    const persona = hello.body.persona;
    let registeredAt: number | undefined;
    // Read before the lookup: a change made after it changes the stamp again (registrationLost).
    const stamp = this.host.personaKeys.stamp();
    const reason = attestationFailure(this.host.personaKeys, hello, this.challengeBytes as Buffer, signature, (at) => {
      registeredAt = at;
    });
    if (reason !== undefined) {
      // One message on the wire for every cause: the detail goes to the audit log only.
      this.fail("AUTH", "ATTESTATION_FAILED", "attestation failed", persona, { detail: reason });
      return;
    }
    // After the signature: a peer without a key never makes the kernel sort and encode its map.
    let measured: Uint8Array | undefined;
    try {
      measured = measurements === undefined ? undefined : encodeMeasurements(measurements);
    } catch (e) {
      // Refused after a signature that verified: the record names the persona as verified.
      return this.fail("PROTOCOL", "TOO_LARGE", (e as Error).message, persona, { verified: true });
    }
    const refused = this.host.admitSession(this, persona);
    // The persona attested: this record names it as verified, unlike every other failed handshake's
    // (written within the failed-handshake record rate, as theirs are).
    if (refused !== undefined) return this.fail("RESOURCE", refused.code, refused.message, persona, { verified: true });
    this.persona = persona;
    this.attestedKey = Buffer.from(hello.body.publicKey);
    this.registeredAt = registeredAt;
    this.stampChecked = stamp;
    this.state = "ready";
    this.reader.setMaxBody(this.maxBody);
    this.hello = undefined;
    // Each token becomes a handle; a token that fails its checks gets handle 0 and a reason.
    const bound = tokens.map((t) => this.host.bindToken(this.handles, persona, t, this.id));
    this.send(welcomeMessage(persona, bound, this.maxBody));
    this.conn.attested?.();
    this.records.opened(persona, bound, measured, this.host.agentSpawn?.(persona), this.attestedKey);
  }

  /**
   * Every REQUEST goes to the pipeline, whose first stage (admission) refuses one over the
   * in-flight limit or after GOODBYE (PROTOCOL §8.6 rule 3), on the record. It counts as in flight
   * until answered, so the kernel's GOODBYE follows its RESPONSE.
   */
  private onRequest(req: Request, stream: number): void {
    this.inFlight++;
    // One reaction per request (a `.finally` after it was a second promise on every request).
    this.host.pipeline.handle(this, req).then(
      (resp) => this.answered(stream, resp),
      (e: Error) => {
        // Its record could not be committed for lack of room: RESOURCE, retryable once there is
        // (PROTOCOL §10.1); logged by the kernel's storage condition, rate-limited, not once a request.
        const full = this.host.space ? this.host.space.failed(e, true) : isStorageFull(e);
        if (!full) this.host.log.error({ err: e, session: this.id }, "request failed in the pipeline");
        this.answered(stream, {
          version: this.version,
          id: req.id,
          status: "FAILURE",
          error: full ? "RESOURCE" : "INTERNAL",
          message: full ? STORAGE_FULL_UNRECORDED : "kernel error",
        });
      },
    );
  }

  private answered(stream: number, resp: Response): void {
    try {
      this.respond(stream, resp);
    } finally {
      this.settled();
    }
  }

  /** A request answered (or its answer dropped): one fewer in flight. */
  private settled(): void {
    this.inFlight--;
    this.maybeFinishClosing();
  }

  private respond(stream: number, resp: Response, substitute = false): void {
    if (this.state === "closed") return;
    let framed: { pieces: Uint8Array[]; bodySize: number };
    try {
      // Into the shared writer when the connection copies what it is given (the socket's): no allocation per answer.
      framed = framePieces({ type: "RESPONSE", body: resp }, stream, this.conn.copiesWritesBelow);
    } catch (e) {
      // An answer no peer could decode (a number past 2^53 a handler let through): that request
      // fails, never the kernel, whose uncaught throw here ended the process.
      this.logPeer("error", { err: e, requestId: resp.id }, "an answer could not be encoded");
      if (substitute) return; // never a loop: a substitute that cannot be encoded is dropped
      const message = `the answer could not be encoded (${(e as Error).message}); the request ran, its answer was not sent`;
      return this.withhold(stream, resp, message, { code: "RESPONSE_UNENCODABLE", errorClass: "INTERNAL" });
    }
    const { pieces, bodySize } = framed;
    if (bodySize > this.maxBody) {
      const message = `the response of ${bodySize} bytes does not fit this session's maxBody of ${this.maxBody} bytes; the request ran, its answer was not sent`;
      return this.withhold(stream, resp, message, { code: "RESPONSE_TOO_LARGE", errorClass: "RESOURCE" });
    }
    writePieces(this.conn, pieces, this.shm);
    this.dropIfNotReading();
  }

  /** Past maxWriteBuffer queued to the peer, the session ends: what it does not read is not kept without bound. */
  private dropIfNotReading(): void {
    const treeOver = this.host.sessionQueued?.(this) === true;
    if (this.conn.buffered > this.host.limits.maxWriteBuffer) {
      this.fail("RESOURCE", "SLOW_CONSUMER", "the peer does not read what the kernel sends; session dropped", this.persona);
    } else if (treeOver) {
      this.fail(
        "RESOURCE",
        "SLOW_CONSUMER",
        "this persona's sessions do not read what the kernel sends (their unread bytes passed maxQueuedBytesPerPersona + maxWriteBuffer); session dropped",
        this.persona,
      );
    }
  }

  /**
   * A response that cannot be sent — its body exceeds the session's maxBody (PROTOCOL §4.5,
   * RESOURCE), or it cannot be encoded (INTERNAL) — is answered FAILURE of that class instead,
   * after a record saying so. The op has run; an op with effects keeps its real answer in the
   * dedupe record, for a retry on a session that takes it.
   */
  private withhold(stream: number, resp: Response, message: string, why: { code: string; errorClass: ErrorClass }): void {
    const substitute: Response = { version: this.version, id: resp.id, status: "FAILURE", error: why.errorClass, message };
    this.inFlight++;
    this.records
      .answerWithheld(this.persona, resp.id, message, resp.status, why)
      .then(
        () => this.respond(stream, substitute, true),
        () => this.respond(stream, { ...substitute, error: "INTERNAL", message: "kernel error (audit unavailable)" }, true),
      )
      .finally(() => this.settled());
  }

  private send(msg: Message, stream = 0): void {
    if (this.state === "closed") return;
    // Large payloads (e.g. a storage.read) are referenced into the frame, not copied: the
    // pieces are written together, or copied once into the shared-memory segment.
    writeMessage(this.conn, msg, stream, this.shm);
  }

  /** Past the session's control-frame rate: it ends, on the record. */
  private controlFlood(): void {
    this.fail("RESOURCE", "CONTROL_FLOOD", this.control.message, this.persona);
  }

  private outOfOrder(type: string): void {
    const message = `${type} is not allowed in session state ${this.state}`;
    this.fail("PROTOCOL", "UNEXPECTED_MESSAGE", message, this.persona || undefined);
  }

  private fatal(e: CodecError): void {
    this.fail(e.errorClass, e.code, e.message, this.persona || this.hello?.body.persona);
  }

  /**
   * Sends a fatal ERROR, audits it (with `detail`, the record's only; unless `audited` is false),
   * and closes. Before WELCOME `persona` is only what HELLO claimed unless `verified` (it
   * attested), and the record is written within the handshake record rate (else counted).
   */
  private fail(
    cls: ErrorClass,
    code: string,
    message: string,
    persona?: string,
    o: { detail?: string; audited?: boolean; verified?: boolean } = {},
  ): void {
    if (this.state === "closed") return;
    this.send({ type: "ERROR", body: { class: cls, code, message, fatal: true } });
    const open = this.state === "ready" || this.state === "closing";
    if (!open) this.host.handshakeFailed?.(this.conn.transport, code);
    if (o.audited !== false) {
      if (open) this.records.failed(persona ?? "-", cls, code, message, o.detail);
      else if (this.host.handshakeRecords.admit(this.conn.transport, this.peerKey, code))
        this.records.handshakeFailed(persona, o.verified === true, cls, code, message, o.detail);
    }
    this.logPeer("info", { code, class: cls }, "session closed on error");
    this.state = "closed";
    this.closeShm();
    this.abort.abort();
    this.conn.end();
    this.host.sessionClosed(this);
  }

  /**
   * Removes the session's segments. One holding a body the peer has not taken keeps its
   * descriptor for a grace after the session (no longer counted) ended: only within the
   * kernel's bound on such segments, else it is removed at once.
   */
  private closeShm(): void {
    const shm = this.shm;
    if (!shm) return;
    shm.close(shm.lingers && this.host.shm?.linger?.(this) === false ? 0 : undefined);
  }

  private maybeFinishClosing(): void {
    if (this.state !== "closing" || this.inFlight > 0) return;
    // The kernel's stop said its GOODBYE when it began (drain); the peer's close gets one now.
    if (!this.drainedByKernel) this.send({ type: "GOODBYE", body: { reason: "drained" } });
    this.conn.end();
    this.closed("goodbye");
  }

  /** Periodic check from the kernel: handshake timeout, dead peer, heartbeat. `now`: performance.now(). */
  tick(now: number): void {
    const lim = this.host.limits;
    if ((this.state === "hello" || this.state === "attest") && now - this.openedAt > lim.handshakeTimeoutMs) {
      this.fail("PROTOCOL", "HANDSHAKE_TIMEOUT", "handshake not completed in time", this.hello?.body.persona);
      return;
    }
    if (now - this.lastSeen > 3 * lim.heartbeatMs) {
      // Judged on two ticks in a row: after a stall of the kernel's own event loop the timer runs
      // before the socket's pending bytes are read, and a live peer's PONG may be among them.
      // A PING meanwhile: a peer that stalled too (in this process, or the whole machine paused)
      // sent nothing while stalled and would judge the same at its next tick; it answers this.
      if (!this.silentAtLastTick) {
        this.silentAtLastTick = true;
        if (this.state === "ready") this.send({ type: "PING", body: { seq: ++this.pingSeq } });
        return;
      }
      this.logPeer("info", { persona: this.persona }, "peer silent for 3 heartbeats: closing");
      this.conn.destroy();
      this.closed("dead peer");
      return;
    }
    this.silentAtLastTick = false;
    if (this.state === "ready") this.send({ type: "PING", body: { seq: ++this.pingSeq } });
  }

  /** Kernel shutdown: no new requests, answer the ones in flight, say GOODBYE. */
  drain(): Promise<void> {
    if (this.state === "closed") return Promise.resolve();
    if (this.state !== "ready" && this.state !== "closing") {
      this.conn.destroy();
      this.closed("kernel stopping");
      return Promise.resolve();
    }
    if (this.state === "ready") {
      this.drainedByKernel = true;
      // Said when the drain begins (PROTOCOL §8.6), not when it ends: told, the peer sends
      // nothing new and waits for its answers, instead of having requests refused (RESOURCE)
      // for as long as the longest request in flight runs.
      this.send({ type: "GOODBYE", body: { reason: "the kernel is stopping" } });
    }
    this.state = "closing";
    const done = new Promise<void>((resolve) => {
      this.drained = resolve;
    });
    this.maybeFinishClosing();
    return done;
  }

  /**
   * Ends the session because its persona lost the right to attest (removed from the registry):
   * a fatal AUTH ERROR with `code`, audited, and in-flight handlers are told to stop.
   */
  expel(code: string, message: string, cls: ErrorClass = "AUTH"): void {
    if (this.state === "closed") return;
    // Its requests still in flight must not commit for a persona that is gone (pipeline/execute.ts).
    if (cls === "AUTH") this.identityLost = message;
    this.fail(cls, code, message, this.persona || undefined);
  }

  /**
   * Why the registration this session attested under no longer stands (removed, re-keyed, or
   * registered again: another holder of the id), asked of the registry now, or undefined. The
   * kernel takes in the CLI's changes at its next tick; until then an effect of this session's
   * would be begun as the id's new holder's (case 519 judges work by when it began), and a read
   * would show the new holder's. `onlyIfChanged` (a read): the registry is asked only when the
   * offline journal's stamp changed since the registration was last found standing — a stat, not
   * a lookup, per request.
   */
  registrationLost(onlyIfChanged = false): string | undefined {
    if (this.registeredAt === undefined) return undefined;
    // Read before the lookup: a change committed after it leaves a stamp this one is not.
    const stamp = onlyIfChanged ? this.host.personaKeys.stamp() : undefined;
    if (stamp !== undefined && stamp === this.stampChecked) return undefined;
    const key = this.host.personaKeys.lookup(this.persona, false);
    if (sameRegistration(this, key && { createdAt: key.createdAt, publicKey: key.raw })) {
      if (stamp !== undefined) this.stampChecked = stamp;
      return undefined;
    }
    return `persona ${this.persona} was removed from the registry or registered again since this session attested`;
  }

  /** Shed by the pre-authentication budget to make room for a newer handshake. */
  shed(): void {
    // Not audited: a flood of connections must not become a flood of audit records (counted in metrics).
    const message = "too many connections are handshaking at once; this one was shed";
    this.fail("RESOURCE", "HANDSHAKE_SHED", message, this.hello?.body.persona, { audited: false });
  }

  /**
   * A log line caused by the peer, rate-limited per persona; before attestation per address, or
   * per connection on the agent transport: an agent's is its own (a socketpair made at its
   * spawn, the one it has), so one agent's noisy handshakes cannot use up the others' lines.
   */
  private logPeer(level: "info" | "warn" | "error", obj: Record<string, unknown>, msg: string): void {
    const key =
      this.persona ||
      (this.conn.transport === "agent" ? `agent:${this.id}` : `${this.conn.transport}:${this.peerKey || "local"}`);
    this.host.peerLog.write(key, level, { ...obj, session: this.id }, msg);
  }

  /** Forced close: in-flight handlers are told to stop. */
  kill(): void {
    this.conn.destroy();
    this.closed("killed");
  }

  private closed(why: string): void {
    if (this.state === "closed") {
      this.drained?.();
      return;
    }
    const wasReady = this.state === "ready" || this.state === "closing";
    this.state = "closed";
    this.closeShm();
    // Every session that opened leaves its end on the record too (a dead peer, a drop, a stop).
    if (wasReady) this.records.closed(this.persona, why);
    this.abort.abort(new Error(`session ended: ${why}`));
    this.host.sessionClosed(this);
    this.drained?.();
  }
}
