import {
  attestationTranscript,
  type ByteChannel,
  type CborMap,
  type CodecError,
  encodeMessage,
  type Frame,
  FrameReader,
  HANDSHAKE_MAX_BODY,
  HEADER_SIZE,
  heartbeatInterval,
  type Identity,
  type KEvent,
  KpipError,
  type Message,
  MIN_MAX_BODY,
  type Response,
  SHM_DEFAULT_THRESHOLD,
  SHM_FEATURE,
  ShmPeer,
  SUPPORTED_VERSIONS,
  shmSegmentName,
  signBytes,
  writeMessage,
  writePieces,
} from "@kpip/protocol";
import { loadShmNative } from "./connectors/shm-native.js";
import { HandshakeClosedError, KernelUnavailableError, ProtocolViolationError } from "./errors.js";

let warnedNoShm = false;
/** Said once per process: large bodies go inline because shared memory is unavailable. */
function warnNoShm(reason: string | undefined): void {
  if (warnedNoShm || process.env.KPIP_SHM === "off") return;
  warnedNoShm = true;
  process.emitWarning(`shared memory unavailable, large bodies go inline: ${reason ?? "unknown reason"}`, "KpipWarning");
}

/** PINGs are answered while less than this waits unsent to the kernel (as the Python client's PONG_BACKLOG). */
export const PONG_BACKLOG = 64 * 1024;

/** What a link needs to introduce itself: who we are and what we hold. */
export interface LinkSetup {
  identity: Identity;
  instance: Uint8Array;
  /** The tokens to bind, read at ATTEST time (refreshed copies replace the originals). */
  tokens: () => Uint8Array[];
  measurements: CborMap | undefined;
  shm: false | { threshold?: number };
  /** The largest body this client accepts (HELLO.maxBody), or undefined: the kernel's maximum. */
  maxBody?: number;
}

/** What the link reports to the client that owns it. */
export interface LinkEvents {
  /** CHALLENGE accepted; ATTEST sent. */
  attesting(link: Link): void;
  response(stream: number, r: Response): void;
  /** An EVENT, and its frame's body size (what a subscription's buffer counts). */
  event(e: KEvent, size: number): void;
  goodbye(reason: string | undefined): void;
  /** How many calls were sent on this link and are not yet answered (what a closing link waits for). */
  outstanding(link: Link): number;
  /** The kernel ended this ready session over a frame too large: the largest request sent on it. */
  tooLarge(link: Link): void;
  /** A ready link died (closed, silent, malformed input, fatal ERROR); `err` says why. */
  lost(link: Link, err: Error): void;
}

/** What WELCOME told us. */
export interface Welcome {
  handles: number[];
  refused: { index: number; code: string; message: string }[];
}

/**
 * What breaks §6.6 in a WELCOME answering a HELLO for `persona` and an ATTEST of `tokensSent`
 * tokens, or undefined. A session acting as another persona than the one this client signed
 * for; fewer handles than tokens (a held token left unbound without a word) or more (handles no
 * token of this client's stands behind); one handle named for two tokens; a refusal of a token
 * never presented, of one bound, or twice: each would have the client act on what is not so.
 */
function welcomeFault(
  w: { persona: string; handles: number[]; refused?: { index: number }[] },
  persona: string,
  tokensSent: number,
): string | undefined {
  if (w.persona !== persona) return `for persona ${JSON.stringify(w.persona)}, not ${JSON.stringify(persona)} as HELLO said`;
  if (w.handles.length !== tokensSent)
    return `with ${w.handles.length} handle(s) for the ${tokensSent} token(s) ATTEST presented`;
  const bound = w.handles.filter((h) => h !== 0);
  if (new Set(bound).size !== bound.length) return `naming one handle for two tokens: ${JSON.stringify(w.handles)}`;
  const named = new Set<number>();
  for (const { index } of w.refused ?? []) {
    if (index >= tokensSent) return `refusing token ${index}, of the ${tokensSent} ATTEST presented`;
    if (w.handles[index] !== 0) return `refusing token ${index}, which it bound as handle ${w.handles[index]}`;
    if (named.has(index)) return `refusing token ${index} twice`;
    named.add(index);
  }
  return undefined;
}

/** `closing`: the kernel said GOODBYE; answers still come, nothing new is sent (§8.6). */
type Phase = "handshaking" | "attesting" | "ready" | "closing" | "dead";

/**
 * One connection's session with the kernel: HELLO, CHALLENGE, ATTEST, WELCOME, then the frame
 * loop dispatching answers, events and heartbeats to {@link LinkEvents}. A link never comes
 * back once dead; the client makes a new one to reconnect.
 */
export class Link {
  phase: Phase = "handshaking";
  version = 0;
  heartbeatMs = 5000;
  lastSeen = Date.now();
  /** The last heartbeat tick found the kernel silent too long (see {@link tick}). */
  private silentAtLastTick = false;
  session = "";
  kernel = "";
  /** Features the kernel enabled in CHALLENGE. */
  features: string[] = [];
  /** The largest body the kernel accepts on this session (CHALLENGE.limits.maxBody). */
  maxBody = Number.MAX_SAFE_INTEGER;
  /** Resolves at WELCOME; rejects if the handshake fails. */
  readonly ready: Promise<Welcome>;
  /**
   * Until CHALLENGE a kernel's frame is at most HANDSHAKE_MAX_BODY.hello (and what HELLO offered),
   * until WELCOME .attest: as the kernel bounds its unauthenticated peers (§8.8), a fake or
   * faulty kernel cannot make the client buffer a session's maxBody before it has one.
   */
  private readonly reader: FrameReader;
  private readonly helloBytes: Buffer;
  /** The features offered in HELLO: CHALLENGE may enable only these (§6.4). */
  private readonly offered: string[];
  /** How many tokens ATTEST presented: WELCOME has one handle for each (§6.6). */
  private tokensSent = 0;
  private settleReady!: { resolve: (w: Welcome) => void; reject: (e: Error) => void };

  constructor(
    readonly channel: ByteChannel,
    private readonly setup: LinkSetup,
    private readonly events: LinkEvents,
  ) {
    this.ready = new Promise<Welcome>((resolve, reject) => {
      this.settleReady = { resolve, reject };
    });
    // A handshake that timed out is not waited on: its later failure must not go unhandled.
    this.ready.catch(() => {});
    this.reader = new FrameReader(Math.min(HANDSHAKE_MAX_BODY.hello, setup.maxBody ?? Number.MAX_SAFE_INTEGER));
    const offerShm = channel.transport === "uds" && setup.shm !== false;
    const shm = offerShm ? loadShmNative() : undefined;
    if (offerShm && !shm?.native) warnNoShm(shm?.reason);
    this.offered = shm?.native ? [SHM_FEATURE] : [];
    const hello = encodeMessage({
      type: "HELLO",
      body: {
        versions: [...SUPPORTED_VERSIONS],
        persona: setup.identity.persona,
        publicKey: setup.identity.publicKey,
        instance: setup.instance,
        features: this.offered,
        client: "kpip-client/0.1.0",
        ...(setup.maxBody !== undefined ? { maxBody: setup.maxBody } : {}),
      },
    });
    this.helloBytes = Buffer.from(hello.subarray(HEADER_SIZE));
    channel.onData((chunk) => this.onData(chunk));
    // The transport's error, when it gave one (a gRPC status: a message over the bound, a reset), is the cause.
    channel.onClose((err) =>
      this.fail(
        this.established
          ? new KernelUnavailableError("connection to the kernel closed", { cause: err })
          : new HandshakeClosedError("connection to the kernel closed before the session was established", { cause: err }),
      ),
    );
    channel.write(hello);
  }

  /** WELCOME came and the link has not died: the session carries answers (it may be closing). */
  get established(): boolean {
    return this.phase === "ready" || this.phase === "closing";
  }

  /** A closing link whose calls are all answered ends its side: the kernel closes the connection. */
  private endIfAnswered(): void {
    if (this.events.outstanding(this) === 0) this.channel.end();
  }

  /** The session's shared-memory channel, when "shm" was negotiated. */
  get shm(): ShmPeer | undefined {
    return this.reader.shm;
  }

  /**
   * Sends a frame given as pieces (through shared memory when it takes it); `written` runs once
   * the connection holds none of them any more (see {@link writePieces}).
   */
  sendPieces(pieces: Uint8Array[], written?: () => void): void {
    writePieces(this.channel, pieces, this.reader.shm, written);
  }

  /** Sends one whole frame (through shared memory when it takes it). */
  sendFrame(frame: Uint8Array): void {
    const shm = this.reader.shm;
    this.channel.write(shm ? shm.wrap(frame) : frame);
  }

  send(msg: Message): void {
    writeMessage(this.channel, msg);
  }

  /** Heartbeat: a silent kernel (over 3 intervals, §8.5) is lost; one quiet for half an interval is PINGed; none at `heartbeatMs` 0. */
  tick(now: number): void {
    if (!this.established || this.heartbeatMs === 0) return;
    if (now - this.lastSeen > 3 * this.heartbeatMs) {
      // Judged on two ticks in a row, as the kernel judges its peers: after a stall of this
      // process (a busy machine), the timer runs before the socket's pending bytes are read, and
      // the kernel's answers may be among them.
      if (!this.silentAtLastTick) {
        this.silentAtLastTick = true;
        return;
      }
      this.fail(new KernelUnavailableError(`kernel silent for more than ${3 * this.heartbeatMs} ms`));
      return;
    }
    this.silentAtLastTick = false;
    if (now - this.lastSeen > this.heartbeatMs / 2) {
      this.send({ type: "PING", body: { seq: now % 0x7fffffff } });
    }
  }

  /**
   * Ends the link: before WELCOME the handshake fails with `err`; after it, `lost` is reported.
   * `told`: a fatal ERROR was just written, so the channel is ended (flushed) rather than dropped.
   */
  fail(err: Error, told = false): void {
    if (this.phase === "dead") return;
    const wasReady = this.established;
    this.kill(told);
    if (wasReady) this.events.lost(this, err);
    else this.settleReady.reject(err);
  }

  /**
   * Ends the link quietly (the client is closing or gave up on it). `flush`: what was written
   * goes out first, and a kernel that keeps its side open is cut after a second.
   */
  kill(flush = false): void {
    this.phase = "dead";
    if (flush) {
      this.channel.end();
      setTimeout(() => this.channel.destroy(), 1000).unref();
    } else this.channel.destroy();
    this.reader.shm?.close();
  }

  private onData(chunk: Uint8Array): void {
    if (this.phase === "dead") return;
    this.lastSeen = Date.now();
    this.reader.push(chunk, this.onFrame, this.onMalformed);
  }

  // Bound once, not per chunk: at one call in flight every answer is a chunk of its own.
  private readonly onFrame = (m: Message, f: Frame): boolean => {
    this.onMessage(m, f.stream, f.body);
    return this.phase !== "dead";
  };

  private readonly onMalformed = (e: CodecError, stage: "frame" | "message"): void =>
    this.refuse(e.code, new ProtocolViolationError(`kernel sent a malformed ${stage}: ${e.message}`, { cause: e }));

  private onMessage(m: Message, stream: number, body: Uint8Array): void {
    switch (m.type) {
      case "CHALLENGE":
        return this.onChallenge(m.body, body);
      case "WELCOME": {
        if (this.phase !== "attesting") return this.violation("unexpected WELCOME");
        const wrong = welcomeFault(m.body, this.setup.identity.persona, this.tokensSent);
        if (wrong !== undefined) return this.violation(`kernel sent WELCOME ${wrong}`, "BAD_FIELD");
        this.phase = "ready";
        this.reader.setMaxBody(this.maxBody);
        this.settleReady.resolve({ handles: m.body.handles, refused: m.body.refused ?? [] });
        return;
      }
      case "RESPONSE":
      case "EVENT":
      case "PING":
      case "PONG":
        // Only a ready session carries these (§8.1, §8.5): before WELCOME a RESPONSE could settle
        // a call waiting to be resent on this link, which the kernel never received on it.
        if (!this.established) return this.violation(`${m.type} before WELCOME`);
        if (m.type === "RESPONSE") {
          this.events.response(stream, m.body);
          if (this.phase === "closing") this.endIfAnswered();
          return;
        }
        if (m.type === "EVENT") return this.events.event(m.body as KEvent, body.length);
        // A kernel that PINGs and never reads would queue PONGs here without end: past
        // PONG_BACKLOG unsent, a PING goes unanswered (the kernel is not reading it anyway).
        if (m.type === "PING") {
          if ((this.channel.unsent?.() ?? 0) < PONG_BACKLOG) this.send({ type: "PONG", body: { seq: m.body.seq } });
          return;
        }
        return;
      case "GOODBYE":
        // The kernel is leaving (§8.6): nothing new goes out on this session (calls wait for the
        // next one); what was sent is still answered, then our side closes and reconnect (if
        // enabled) follows. A kernel's second GOODBYE is ignored.
        if (this.phase === "closing") return;
        if (this.phase !== "ready") return this.violation("GOODBYE before WELCOME");
        this.phase = "closing";
        this.events.goodbye(m.body.reason);
        this.endIfAnswered();
        return;
      case "ERROR": {
        if (!m.body.fatal) return;
        const err = new KpipError(m.body.class, m.body.message, { code: m.body.code });
        if (this.established && (m.body.code === "TOO_LARGE" || m.body.code === "SHM_TOO_LARGE")) {
          this.events.tooLarge(this);
        }
        return this.fail(err);
      }
      default:
        this.violation(`unexpected ${m.type} from the kernel`);
    }
  }

  private onChallenge(c: Extract<Message, { type: "CHALLENGE" }>["body"], body: Uint8Array): void {
    if (this.phase !== "handshaking") return this.violation("unexpected CHALLENGE");
    if (!SUPPORTED_VERSIONS.includes(c.version))
      return this.violation(`kernel chose unsupported version ${c.version}`, "UNSUPPORTED_VERSION");
    // §6.4: a subset of HELLO's features. One this client never offered it cannot speak.
    const unoffered = c.features.filter((f) => !this.offered.includes(f));
    if (unoffered.length > 0)
      return this.violation(`kernel enabled features ${JSON.stringify(unoffered)} this client did not offer`, "BAD_FIELD");
    // §8.3: min(the kernel's maximum, HELLO.maxBody), never below MIN_MAX_BODY. A larger one would have
    // this client buffer (and with shm reserve) more than it agreed to.
    const granted = c.limits.maxBody;
    if (granted < MIN_MAX_BODY || (this.setup.maxBody !== undefined && granted > this.setup.maxBody))
      return this.violation(
        `kernel set maxBody ${granted}, outside ${MIN_MAX_BODY}..${this.setup.maxBody ?? "its own maximum"}`,
        "BAD_FIELD",
      );
    this.version = c.version;
    // 0 is no heartbeat, 1..99 is 100 (§8.5): at 0 the tick PINGed, or called the kernel silent, every 50 ms.
    this.heartbeatMs = heartbeatInterval(c.heartbeatMs);
    // The session's maxBody from WELCOME on (onMessage); until then a WELCOME's bound.
    this.reader.setMaxBody(Math.min(HANDSHAKE_MAX_BODY.attest, c.limits.maxBody));
    this.maxBody = c.limits.maxBody;
    this.channel.limitMessages?.(HEADER_SIZE + c.limits.maxBody);
    this.session = c.session;
    this.kernel = c.kernel;
    this.features = c.features;
    if (c.features.includes(SHM_FEATURE)) {
      const native = loadShmNative().native;
      const shm = this.setup.shm;
      if (!native || this.channel.transport !== "uds" || shm === false) {
        return this.violation("kernel enabled shm, which this client did not offer", "BAD_FIELD");
      }
      this.reader.shm = new ShmPeer(native, {
        ownName: shmSegmentName(c.kernel, c.session, "p"),
        peerName: shmSegmentName(c.kernel, c.session, "k"),
        maxBody: c.limits.maxBody,
        threshold: shm.threshold ?? SHM_DEFAULT_THRESHOLD,
      });
    }
    const signature = signBytes(this.setup.identity.privateKey, attestationTranscript(this.helloBytes, body));
    this.phase = "attesting";
    this.events.attesting(this);
    const measurements = this.setup.measurements;
    const tokens = this.setup.tokens();
    this.tokensSent = tokens.length;
    this.send({
      type: "ATTEST",
      body: { signature, tokens, ...(measurements ? { measurements } : {}) },
    });
  }

  /** A message out of order from the kernel (§8.1): refused as the kernel refuses one. */
  private violation(msg: string, code = "UNEXPECTED_MESSAGE"): void {
    this.refuse(code, new ProtocolViolationError(msg));
  }

  /** §4.6, §8.7: the receiver of a malformed or out-of-order frame says why in one fatal ERROR, then closes. */
  private refuse(code: string, err: Error): void {
    if (this.phase === "dead") return;
    this.send({ type: "ERROR", body: { class: "PROTOCOL", code, message: err.message.slice(0, 1024), fatal: true } });
    this.fail(err, true);
  }
}
