import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { readFileSync } from "node:fs";
import {
  attestationTranscript,
  type CapabilityRef,
  type CborMap,
  type CborValue,
  CodecError,
  decodeMessage,
  decodeToken,
  effectiveGrant,
  encodeIntent,
  encodeMessage,
  encodeMessagePieces,
  type Frame,
  FrameDecoder,
  HEADER_SIZE,
  type Identity,
  type Intent,
  type KEvent,
  KpipError,
  type Message,
  MessageError,
  parseIdentity,
  RETRYABLE_CLASSES,
  type RequestContext,
  type Response,
  SHM_DEFAULT_THRESHOLD,
  SHM_FEATURE,
  ShmPeer,
  type Status,
  SUPPORTED_VERSIONS,
  shmSegmentName,
  signBytes,
  type Token,
} from "@kpip/protocol";
import { type BackoffPolicy, backoffDelay, DEFAULT_RECONNECT_BACKOFF, DEFAULT_RETRY_BACKOFF } from "./backoff.js";
import type { Channel, Connector } from "./connectors/connector.js";
import { FallbackConnector, GrpcConnector, type GrpcConnectorOptions } from "./connectors/grpc.js";
import { loadShmNative } from "./connectors/shm-native.js";
import { InheritedConnector, UdsConnector } from "./connectors/uds.js";
import {
  CancelledError,
  KernelUnavailableError,
  ProtocolViolationError,
  RequestTooLargeError,
  TimeoutError,
  TokenRefreshError,
} from "./errors.js";
import {
  AgentsApi,
  ComputeApi,
  EventsApi,
  OpsApi,
  PersonasApi,
  ResourcesApi,
  StorageApi,
  SystemApi,
  TokensApi,
} from "./families.js";
import { loadIdentity } from "./identity.js";
import { Subscription } from "./subscription.js";

export type ClientState = "connecting" | "handshaking" | "attesting" | "ready" | "reconnecting" | "closing" | "closed";

export interface ConnectOptions {
  /** Unix socket path of the kernel (or give `connector`). */
  socket?: string;
  /**
   * The kernel's gRPC transport. With `socket` too, the Unix socket is tried first and gRPC
   * is the fallback; `client.transport` says which one is in use.
   */
  grpc?: GrpcConnectorOptions;
  connector?: Connector;
  /**
   * Shared memory for large bodies on a Unix-socket session (default on when the native
   * module is available): `false` to never offer it, or the body size above which it is used.
   */
  shm?: boolean | { threshold?: number };
  /** The persona's identity, or the path of its identity file. */
  identity: Identity | string;
  /** Tokens to hold and bind at every attestation: wire bytes, or the base64url text `kpip token mint` prints. */
  tokens?: (Uint8Array | string)[];
  /** Workspace put in every request's context unless a call names another. */
  workspace?: string;
  /** Time allowed for the first connection (all attempts, when waiting for the kernel). Default 10 s. */
  connectTimeoutMs?: number;
  /** If no kernel answers at first, keep trying until connectTimeoutMs instead of failing at once. */
  waitForKernel?: boolean;
  /** Reconnect after the connection is lost (default true). */
  reconnect?: boolean;
  reconnectBackoff?: BackoffPolicy;
  /** The attempt counter resets only after a connection stayed up this long (default 5 s). */
  healthyAfterMs?: number;
  /** While reconnecting: fail calls at once with KernelUnavailableError instead of waiting. */
  failFast?: boolean;
  /** Longest a call without a deadline waits for a reconnect (default 30 s). */
  unavailableTimeoutMs?: number;
  /** Attempts per call for RESOURCE and INTERNAL failures (default 4), within the deadline. */
  maxAttempts?: number;
  retryBackoff?: BackoffPolicy;
  /** Refresh a held token this long before it expires (default 60 s, at most half its lifetime). */
  refreshMarginMs?: number;
  /** Measurements of this persona's runtime (e.g. a binary hash), sent in ATTEST and recorded in the audit log. */
  measurements?: CborMap;
}

export interface CallOptions {
  /** Relative deadline; it travels in the intent so the kernel stops work after it. */
  deadlineMs?: number;
  signal?: AbortSignal;
  workspace?: string;
  /** Capability references for this call (handles or inline tokens); default: every bound handle. */
  caps?: CapabilityRef[];
  traceparent?: string;
  /** Execution-context id (text, at most 128 bytes: a task or run id, or which host asked), recorded in the request's audit records. */
  execution?: string;
  /** Security domain the request acts in (domain-scoped tokens decide on it); recorded. */
  domain?: string;
}

/** A non-failure answer. FAILURE is thrown as {@link KpipError}. */
export interface CallResult {
  status: Exclude<Status, "FAILURE">;
  payload: CborValue | undefined;
}

interface HeldToken {
  bytes: Uint8Array;
  token: Token;
  handle: number;
  timer?: NodeJS.Timeout;
}

interface PendingCall {
  id: number;
  stream: number;
  intent: Uint8Array;
  context: RequestContext;
  caps: CapabilityRef[] | undefined;
  deadline: number | undefined;
  attempts: number;
  authRetried: boolean;
  /** Sent on the current link. */
  sent: boolean;
  /** The REQUEST body's size when last sent (to tell which request a TOO_LARGE refusal was about). */
  size: number;
  resolve: (r: Response) => void;
  reject: (e: Error) => void;
  timer?: NodeJS.Timeout;
}

let warnedNoShm = false;
/** Said once per process: large bodies go inline because shared memory is unavailable. */
function warnNoShm(reason: string | undefined): void {
  if (warnedNoShm || process.env.KPIP_SHM === "off") return;
  warnedNoShm = true;
  process.emitWarning(`shared memory unavailable, large bodies go inline: ${reason ?? "unknown reason"}`, "KpipWarning");
}

/** One connection attempt's state: a channel, its decoder, and the session it carries. */
interface Link {
  channel: Channel;
  decoder: FrameDecoder;
  version: number;
  heartbeatMs: number;
  lastSeen: number;
  helloBytes: Buffer;
  phase: "handshaking" | "attesting" | "ready" | "dead";
  ready: { resolve: () => void; reject: (e: Error) => void };
  /** Features the kernel enabled in CHALLENGE. */
  features: string[];
  /** The shared-memory channel, when "shm" was negotiated. */
  shm?: ShmPeer;
  /** The largest body the kernel accepts on this session (CHALLENGE.limits.maxBody). */
  maxBody: number;
}

/**
 * The persona runtime's connection to a kernel: handshake and attestation, heartbeats,
 * reconnect with backoff, retries, token refresh, deadlines and cancellation.
 *
 * ```ts
 * const client = await KernelClient.connect({ socket: ".kpip/kernel.sock", identity: ".kpip/admin.identity", tokens: [token] });
 * await client.storage.write("obj://ws1/hello", "hi");
 * await client.close();
 * ```
 *
 * Events: `state` (ClientState, transport), `event` (KEvent), `tokenRefreshed`, `tokenRefreshFailed`,
 * `tokenRefused`, `goodbye`, `closed`.
 */
export class KernelClient extends EventEmitter {
  state: ClientState = "connecting";
  readonly persona: string;
  /** Random per client instance: with the request id it lets the kernel dedupe retries. */
  readonly instance = randomBytes(16);
  sessionId = "";
  kernelId = "";
  /** Tokens the kernel refused to bind at the last attestation, with the reason. */
  refusedTokens: { index: number; code: string; message: string }[] = [];
  /** Connections made so far (1 after connect; more after reconnects). */
  connections = 0;
  /** Typed families: each method is one `call`. */
  readonly system = new SystemApi(this.call.bind(this));
  readonly storage = new StorageApi(this.call.bind(this), () => this.link?.maxBody ?? 16 * 1024 * 1024);
  readonly tokens = new TokensApi(this.call.bind(this));
  readonly events = new EventsApi(this);
  readonly compute = new ComputeApi(this.call.bind(this));
  readonly ops = new OpsApi(this.call.bind(this));
  readonly resources = new ResourcesApi(this.call.bind(this));
  readonly agents = new AgentsApi(this.call.bind(this));
  readonly personas = new PersonasApi(this.call.bind(this));
  private link: Link | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, PendingCall>();
  private readonly held: HeldToken[];
  private readonly subscriptions = new Set<Subscription>();
  private timer: NodeJS.Timeout | undefined;
  private healthyTimer: NodeJS.Timeout | undefined;
  private attempt = 0;
  private refreshError: Error | undefined;
  private reconnecting: Promise<void> | undefined;
  private readonly identity: Identity;
  private readonly o: Required<
    Pick<
      ConnectOptions,
      | "reconnect"
      | "healthyAfterMs"
      | "failFast"
      | "unavailableTimeoutMs"
      | "maxAttempts"
      | "refreshMarginMs"
      | "connectTimeoutMs"
    >
  > & { reconnectBackoff: BackoffPolicy; retryBackoff: BackoffPolicy; shm: boolean | { threshold?: number } };

  private constructor(
    private readonly connector: Connector,
    private readonly opts: ConnectOptions,
  ) {
    super();
    this.identity = typeof opts.identity === "string" ? loadIdentity(opts.identity) : opts.identity;
    this.persona = this.identity.persona;
    this.o = {
      reconnect: opts.reconnect ?? true,
      healthyAfterMs: opts.healthyAfterMs ?? 5_000,
      failFast: opts.failFast ?? false,
      unavailableTimeoutMs: opts.unavailableTimeoutMs ?? 30_000,
      maxAttempts: opts.maxAttempts ?? 4,
      refreshMarginMs: opts.refreshMarginMs ?? 60_000,
      connectTimeoutMs: opts.connectTimeoutMs ?? 10_000,
      reconnectBackoff: opts.reconnectBackoff ?? DEFAULT_RECONNECT_BACKOFF,
      retryBackoff: opts.retryBackoff ?? DEFAULT_RETRY_BACKOFF,
      shm: opts.shm ?? true,
    };
    this.held = (opts.tokens ?? []).map((t) => {
      const bytes = typeof t === "string" ? Buffer.from(t.trim(), "base64url") : t;
      return { bytes, token: decodeToken(bytes), handle: 0 };
    });
    this.on("error", () => {});
  }

  /** Connects, handshakes and attests; resolves when the session is ready. */
  static async connect(opts: ConnectOptions): Promise<KernelClient> {
    const chain: Connector[] = [];
    if (opts.socket) chain.push(new UdsConnector(opts.socket));
    if (opts.grpc) chain.push(new GrpcConnector(opts.grpc));
    const connector = opts.connector ?? (chain.length > 1 ? new FallbackConnector(chain) : chain[0]);
    if (!connector) throw new TypeError("KernelClient.connect needs a socket path, gRPC options or a connector");
    const c = new KernelClient(connector, opts);
    await c.firstConnect();
    return c;
  }

  /**
   * Connects as an agent the kernel spawned: reads the identity, token and socket the kernel
   * handed over on the inherited pipe named by KPIP_BOOTSTRAP_FD (they are never in argv or
   * the environment). Call once, early: the pipe is read to its end.
   */
  static async connectAsAgent(opts: Omit<ConnectOptions, "identity" | "socket" | "tokens"> = {}): Promise<KernelClient> {
    const fd = Number(process.env.KPIP_BOOTSTRAP_FD);
    if (!Number.isInteger(fd) || fd < 3) throw new TypeError("not started as a kpip agent (KPIP_BOOTSTRAP_FD is not set)");
    const boot = JSON.parse(readFileSync(fd, "utf8")) as { identity: string; token: string; socket?: string; fd?: number };
    const identity = parseIdentity(boot.identity);
    // A sandboxed agent reaches the kernel only through the connection it inherited.
    if (typeof boot.fd === "number")
      return KernelClient.connect({
        reconnect: false,
        ...opts,
        connector: new InheritedConnector(boot.fd),
        identity,
        tokens: [boot.token],
      });
    return KernelClient.connect({ ...opts, socket: boot.socket, identity, tokens: [boot.token] });
  }

  /** Features the kernel enabled on the current session (e.g. "shm"). */
  get features(): string[] {
    return this.link?.features ?? [];
  }

  /** Frames that went through shared memory on the current session, each way. */
  get shmFrames(): { sent: number; received: number } {
    return { sent: this.link?.shm?.sent ?? 0, received: this.link?.shm?.received ?? 0 };
  }

  /** The transport of the current connection. */
  get transport(): string {
    return this.link?.channel.transport ?? this.connector.transport;
  }

  /** Handles of the held tokens on the current session (0 = not bound). */
  get handles(): number[] {
    return this.held.map((h) => h.handle).filter((h) => h > 0);
  }

  /** Calls waiting for an answer (sent or queued). */
  get inFlight(): number {
    return this.pending.size;
  }

  private setState(s: ClientState): void {
    if (this.state === s) return;
    this.state = s;
    // With the transport in use, so a fallback from the socket to gRPC is visible as it happens.
    this.emit("state", s, this.transport);
  }

  // ---- connection management -------------------------------------------------------

  private async firstConnect(): Promise<void> {
    const until = Date.now() + this.o.connectTimeoutMs;
    for (;;) {
      try {
        await this.establish(Math.max(1, until - Date.now()));
        break;
      } catch (e) {
        // A handshake the kernel shed to make room under a connection flood (PROTOCOL §8.8) is
        // tried again within the connect timeout, like a kernel that is not up yet.
        const shed = e instanceof KpipError && e.code === "HANDSHAKE_SHED";
        const retry = ((this.opts.waitForKernel && e instanceof KernelUnavailableError) || shed) && Date.now() < until;
        if (!retry) {
          this.shutdown(e as Error);
          throw e;
        }
        this.setState("connecting");
        await new Promise((r) =>
          setTimeout(r, Math.min(backoffDelay(this.o.reconnectBackoff, this.attempt++), until - Date.now())),
        );
      }
    }
    this.timer = setInterval(() => this.tick(), 50);
    this.timer.unref();
    this.scheduleRefreshes();
  }

  /** One attempt: connect, HELLO, CHALLENGE, ATTEST, WELCOME. */
  private async establish(timeoutMs: number): Promise<void> {
    this.setState(this.connections === 0 ? "connecting" : "reconnecting");
    const channel = await this.connector.connect(Date.now() + timeoutMs);
    const shmNative = channel.transport === "uds" && this.o.shm !== false ? loadShmNative().native : undefined;
    if (channel.transport === "uds" && this.o.shm !== false && !shmNative) warnNoShm(loadShmNative().reason);
    const hello = encodeMessage({
      type: "HELLO",
      body: {
        versions: [...SUPPORTED_VERSIONS],
        persona: this.identity.persona,
        publicKey: this.identity.publicKey,
        instance: this.instance,
        features: shmNative ? [SHM_FEATURE] : [],
        client: "kpip-client/0.1.0",
      },
    });
    let link!: Link;
    const ready = new Promise<void>((resolve, reject) => {
      link = {
        channel,
        decoder: new FrameDecoder(),
        version: 0,
        heartbeatMs: 5000,
        lastSeen: Date.now(),
        helloBytes: Buffer.from(hello.subarray(HEADER_SIZE)),
        phase: "handshaking",
        ready: { resolve, reject },
        features: [],
        maxBody: Number.MAX_SAFE_INTEGER,
      };
    });
    this.link = link;
    channel.onData((chunk) => this.onData(link, chunk));
    channel.onClose(() => this.onLinkLost(link, new KernelUnavailableError("connection to the kernel closed")));
    this.setState("handshaking");
    channel.write(hello);
    let t: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        ready,
        new Promise<never>((_, reject) => {
          t = setTimeout(
            () => reject(new TimeoutError(`handshake with ${this.connector.address} took longer than ${timeoutMs} ms`)),
            timeoutMs,
          );
        }),
      ]);
    } catch (e) {
      link.phase = "dead";
      channel.destroy();
      throw e;
    } finally {
      clearTimeout(t);
    }
    this.connections++;
    clearTimeout(this.healthyTimer);
    // A flapping kernel must not reset the backoff: only a connection that stays up does.
    this.healthyTimer = setTimeout(() => {
      this.attempt = 0;
    }, this.o.healthyAfterMs);
    this.healthyTimer.unref();
    this.setState("ready");
    this.flush();
    if (this.connections > 1) void this.resubscribe();
  }

  /** After a reconnect: subscribe again to every pattern (events emitted while away are not replayed). */
  private async resubscribe(): Promise<void> {
    for (const sub of this.subscriptions) {
      try {
        const r = await this.call("event.subscribe", sub.pattern);
        sub.remoteId = (r.payload as { subscription: number }).subscription;
        this.emit("resubscribed", sub.pattern);
      } catch (e) {
        this.emit("resubscribeFailed", { pattern: sub.pattern, error: e });
      }
    }
  }

  /**
   * Subscribes to topic:// names matching `pattern` (`*` one segment, `**` any depth). The
   * result is an async iterable of events with a bounded buffer (`bufferSize`, default 1000);
   * it survives reconnects and ends with `unsubscribe()`, `break`, or `close()`.
   */
  async subscribe(pattern: string, opts: CallOptions & { bufferSize?: number } = {}): Promise<Subscription> {
    const { bufferSize, ...callOpts } = opts;
    const sub = new Subscription(pattern, bufferSize ?? 1000, async (s) => {
      this.subscriptions.delete(s);
      if (this.state === "ready") await this.call("event.unsubscribe", s.pattern, { subscription: s.remoteId }).catch(() => {});
    });
    const r = await this.call("event.subscribe", pattern, {}, callOpts);
    sub.remoteId = (r.payload as { subscription: number }).subscription;
    this.subscriptions.add(sub);
    return sub;
  }

  private onLinkLost(link: Link, err: Error): void {
    if (link.phase === "dead") return;
    const wasReady = link.phase === "ready";
    link.phase = "dead";
    link.channel.destroy();
    link.shm?.close();
    if (link !== this.link) return;
    if (!wasReady) {
      link.ready.reject(err);
      return;
    }
    for (const p of this.pending.values()) {
      p.sent = false;
      if (p.deadline === undefined && !p.timer) {
        p.timer = setTimeout(
          () => this.settle(p, undefined, new KernelUnavailableError(`kernel unavailable for ${this.o.unavailableTimeoutMs} ms`)),
          this.o.unavailableTimeoutMs,
        );
      }
    }
    if (this.state === "closing" || this.state === "closed" || !this.o.reconnect) {
      this.shutdown(err);
      return;
    }
    if (this.o.failFast) {
      for (const p of [...this.pending.values()])
        this.settle(p, undefined, new KernelUnavailableError(`kernel unavailable: ${err.message}`, { cause: err }));
    }
    void this.reconnectLoop();
  }

  private reconnectLoop(): Promise<void> {
    if (this.reconnecting) return this.reconnecting;
    this.setState("reconnecting");
    this.reconnecting = (async () => {
      while (this.state === "reconnecting") {
        await new Promise((r) => setTimeout(r, backoffDelay(this.o.reconnectBackoff, this.attempt++)));
        if (this.state !== "reconnecting") break;
        try {
          await this.establish(this.o.connectTimeoutMs);
        } catch (e) {
          this.emit("reconnectFailed", e);
          if ((this.state as ClientState) === "closed") break;
          if (e instanceof KpipError && e.errorClass === "AUTH") {
            // Refused attestation (the persona was removed or its key changed): retrying cannot help.
            this.shutdown(e);
            break;
          }
          this.setState("reconnecting");
        }
      }
    })().finally(() => {
      this.reconnecting = undefined;
    });
    return this.reconnecting;
  }

  private tick(): void {
    const now = Date.now();
    const link = this.link;
    if (link && link.phase === "ready") {
      // Dead or frozen kernel: silent for over 2 intervals (checked every 50 ms, so detected within 3).
      if (now - link.lastSeen > 2 * link.heartbeatMs) {
        this.onLinkLost(link, new KernelUnavailableError(`kernel silent for more than ${2 * link.heartbeatMs} ms`));
      } else if (now - link.lastSeen > link.heartbeatMs / 2) {
        link.channel.write(encodeMessage({ type: "PING", body: { seq: now % 0x7fffffff } }));
      }
    }
  }

  // ---- incoming ------------------------------------------------------------------

  private onData(link: Link, chunk: Uint8Array): void {
    if (link.phase === "dead") return;
    link.lastSeen = Date.now();
    let frames: Frame[];
    try {
      frames = link.decoder.push(chunk);
    } catch (e) {
      this.onLinkLost(link, new ProtocolViolationError(`kernel sent a malformed frame: ${(e as Error).message}`, { cause: e }));
      return;
    }
    for (const raw of frames) {
      let f = raw;
      let m: Message;
      try {
        if (raw.flags !== 0) {
          if (!link.shm) throw new CodecError("PROTOCOL", "SHM_NOT_NEGOTIATED", "frame flags set without the shm feature");
          f = link.shm.unwrap(raw);
        }
        m = decodeMessage(f);
      } catch (e) {
        if (!(e instanceof CodecError)) throw e;
        this.onLinkLost(link, new ProtocolViolationError(`kernel sent a malformed message: ${e.message}`, { cause: e }));
        return;
      }
      this.onMessage(link, m, f);
      if ((link.phase as Link["phase"]) === "dead") return;
    }
  }

  private onMessage(link: Link, m: Message, f: Frame): void {
    switch (m.type) {
      case "CHALLENGE": {
        if (link.phase !== "handshaking") return this.violation(link, "unexpected CHALLENGE");
        if (!SUPPORTED_VERSIONS.includes(m.body.version))
          return this.violation(link, `kernel chose unsupported version ${m.body.version}`);
        link.version = m.body.version;
        link.heartbeatMs = m.body.heartbeatMs;
        link.decoder.setMaxBody(m.body.limits.maxBody);
        link.maxBody = m.body.limits.maxBody;
        this.sessionId = m.body.session;
        this.kernelId = m.body.kernel;
        link.features = m.body.features;
        const native = loadShmNative().native;
        if (m.body.features.includes(SHM_FEATURE)) {
          if (!native || link.channel.transport !== "uds" || this.o.shm === false) {
            return this.violation(link, "kernel enabled shm, which this client did not offer");
          }
          const shm = typeof this.o.shm === "object" ? this.o.shm : {};
          link.shm = new ShmPeer(native, {
            ownName: shmSegmentName(m.body.kernel, m.body.session, "p"),
            peerName: shmSegmentName(m.body.kernel, m.body.session, "k"),
            maxBody: m.body.limits.maxBody,
            threshold: shm.threshold ?? SHM_DEFAULT_THRESHOLD,
          });
        }
        const signature = signBytes(this.identity.privateKey, attestationTranscript(link.helloBytes, f.body));
        link.phase = "attesting";
        this.setState("attesting");
        link.channel.write(
          encodeMessage({
            type: "ATTEST",
            body: {
              signature,
              tokens: this.held.map((h) => h.bytes),
              ...(this.opts.measurements ? { measurements: this.opts.measurements } : {}),
            },
          }),
        );
        return;
      }
      case "WELCOME":
        if (link.phase !== "attesting") return this.violation(link, "unexpected WELCOME");
        this.held.forEach((h, i) => {
          h.handle = m.body.handles[i] ?? 0;
        });
        this.refusedTokens = m.body.refused ?? [];
        for (const r of this.refusedTokens) this.emit("tokenRefused", r);
        link.phase = "ready";
        link.ready.resolve();
        return;
      case "RESPONSE": {
        const p = this.pending.get(f.stream);
        if (p && p.id === m.body.id) this.onResponse(p, m.body);
        return;
      }
      case "EVENT": {
        const e = m.body as KEvent;
        if (e.subscription !== 0) {
          for (const sub of this.subscriptions) if (sub.remoteId === e.subscription) sub.push(e);
        }
        this.emit("event", e);
        return;
      }
      case "PING":
        link.channel.write(encodeMessage({ type: "PONG", body: { seq: m.body.seq } }));
        return;
      case "PONG":
        return;
      case "GOODBYE":
        // The kernel is leaving: close our side too; reconnect (if enabled) follows the close.
        this.emit("goodbye", m.body.reason);
        link.channel.end();
        return;
      case "ERROR": {
        const err = new KpipError(m.body.class, m.body.message, { code: m.body.code });
        if (m.body.fatal) {
          if (link.phase === "ready" && (m.body.code === "TOO_LARGE" || m.body.code === "SHM_TOO_LARGE")) {
            this.refuseLargest(link);
          }
          if (link.phase !== "ready") {
            link.phase = "dead";
            link.channel.destroy();
            link.ready.reject(err);
          } else if (err.errorClass === "AUTH" && link === this.link) {
            // The persona may no longer attest (e.g. PERSONA_REMOVED): reconnecting cannot help.
            this.shutdown(err);
          } else this.onLinkLost(link, err);
        }
        return;
      }
      default:
        this.violation(link, `unexpected ${m.type} from the kernel`);
    }
  }

  /**
   * The kernel ended the session because a frame was too large: that was the largest request
   * sent on this link. It fails now and is never resent; the others are resent after reconnect.
   */
  private refuseLargest(link: Link): void {
    let largest: PendingCall | undefined;
    for (const p of this.pending.values()) if (p.sent && (!largest || p.size > largest.size)) largest = p;
    if (!largest) return;
    const limit = link.maxBody === Number.MAX_SAFE_INTEGER ? largest.size - 1 : link.maxBody;
    this.settle(
      largest,
      undefined,
      new RequestTooLargeError(
        largest.size,
        limit,
        `the kernel refused a request of ${largest.size} bytes as too large (its limit is ${limit} bytes per message)`,
      ),
    );
  }

  private violation(link: Link, msg: string): void {
    const err = new ProtocolViolationError(msg);
    if (link.phase !== "ready") {
      link.phase = "dead";
      link.channel.destroy();
      link.ready.reject(err);
    } else this.onLinkLost(link, err);
  }

  private onResponse(p: PendingCall, r: Response): void {
    if (r.status === "FAILURE" && r.error !== undefined) {
      const now = Date.now();
      if (RETRYABLE_CLASSES.has(r.error) && p.attempts < this.o.maxAttempts) {
        const delay = backoffDelay(this.o.retryBackoff, p.attempts);
        if (p.deadline === undefined || now + delay < p.deadline) {
          p.attempts++;
          p.sent = false;
          setTimeout(() => this.send(p), delay).unref();
          return;
        }
      }
      if (r.error === "AUTH" && !p.authRetried && this.link) {
        // One fresh handshake and attestation, then the same request again.
        p.authRetried = true;
        p.sent = false;
        this.onLinkLost(this.link, new KernelUnavailableError("re-attesting after AUTH"));
        return;
      }
    }
    this.settle(p, r);
  }

  private settle(p: PendingCall, r: Response | undefined, err?: Error): void {
    if (!this.pending.delete(p.stream)) return;
    clearTimeout(p.timer);
    if (r) p.resolve(r);
    else p.reject(err as Error);
    if (this.pending.size === 0) this.emit("drained");
  }

  // ---- calls -----------------------------------------------------------------------

  /** Sends one intent and waits for its answer. FAILURE throws {@link KpipError}. */
  async call(op: string, target: string, args: CborMap = {}, opts: CallOptions = {}): Promise<CallResult> {
    const r = await this.request({ op, target, args }, opts);
    if (r.status === "FAILURE") {
      throw new KpipError(r.error ?? "INTERNAL", r.message ?? "request failed", { requestId: r.id });
    }
    return { status: r.status, payload: r.payload };
  }

  /** Sends an intent and returns the raw response, FAILURE included (after retries). */
  request(intent: Intent, opts: CallOptions = {}): Promise<Response> {
    if (this.state === "closed" || this.state === "closing") {
      return Promise.reject(new KernelUnavailableError(`client is ${this.state}`));
    }
    if (this.refreshError) {
      const e = this.refreshError;
      this.refreshError = undefined;
      return Promise.reject(e);
    }
    if (this.state !== "ready" && this.o.failFast) {
      return Promise.reject(new KernelUnavailableError(`kernel unavailable (client is ${this.state})`));
    }
    if (opts.signal?.aborted) return Promise.reject(new CancelledError("call aborted before it was sent"));
    if (opts.execution !== undefined && opts.execution.length > 128) {
      return Promise.reject(new MessageError("BAD_FIELD", "context.execution is longer than 128 characters"));
    }
    const full: Intent = { ...intent };
    const deadline = opts.deadlineMs !== undefined ? Date.now() + opts.deadlineMs : undefined;
    if (deadline !== undefined) full.constraints = { ...full.constraints, deadline };
    // Encoded once: a retry or a resend after reconnect carries the very same bytes and id.
    const bytes = encodeIntent(full);
    const id = this.nextId++;
    const context: RequestContext = { persona: this.persona };
    const ws = opts.workspace ?? this.opts.workspace;
    if (ws) context.workspace = ws;
    if (opts.traceparent) context.traceparent = opts.traceparent;
    if (opts.execution) context.execution = opts.execution;
    if (opts.domain) context.domain = opts.domain;
    return new Promise<Response>((resolve, reject) => {
      const p: PendingCall = {
        id,
        stream: id % 0x100000000,
        intent: bytes,
        context,
        caps: opts.caps,
        deadline,
        attempts: 1,
        authRetried: false,
        sent: false,
        size: 0,
        resolve,
        reject,
      };
      const waitMs = deadline !== undefined ? deadline - Date.now() : undefined;
      if (waitMs !== undefined) {
        p.timer = setTimeout(() => this.settle(p, undefined, new TimeoutError(`no answer within ${opts.deadlineMs} ms`)), waitMs);
      } else if (this.state !== "ready") {
        p.timer = setTimeout(
          () => this.settle(p, undefined, new KernelUnavailableError(`kernel unavailable for ${this.o.unavailableTimeoutMs} ms`)),
          this.o.unavailableTimeoutMs,
        );
      }
      if (opts.signal) {
        const onAbort = () => this.settle(p, undefined, new CancelledError("call aborted"));
        opts.signal.addEventListener("abort", onAbort, { once: true });
        const done = () => opts.signal?.removeEventListener("abort", onAbort);
        p.resolve = (r) => {
          done();
          resolve(r);
        };
        p.reject = (e) => {
          done();
          reject(e);
        };
      }
      this.pending.set(p.stream, p);
      this.send(p);
    });
  }

  private send(p: PendingCall): void {
    const link = this.link;
    if (!this.pending.has(p.stream) || p.sent || !link || link.phase !== "ready" || this.state === "closed") return;
    // Large intents (bulk payloads) are referenced, not copied again, into the frame: the pieces
    // go to the socket as one vectored write, or straight into the shared-memory segment.
    const pieces = encodeMessagePieces(
      {
        type: "REQUEST",
        body: {
          version: link.version,
          persona: this.persona,
          id: p.id,
          intent: p.intent,
          context: p.context,
          caps: p.caps ?? this.handles,
        },
      },
      p.stream,
      64 * 1024,
    );
    let size = -HEADER_SIZE;
    for (const piece of pieces) size += piece.length;
    p.size = size;
    if (size > link.maxBody) {
      // The kernel would end the session over it (fatal TOO_LARGE): refused here, never sent.
      this.settle(p, undefined, new RequestTooLargeError(size, link.maxBody));
      return;
    }
    p.sent = true;
    const viaShm = link.shm?.wrapPieces(pieces);
    if (viaShm) link.channel.write(viaShm);
    else for (const piece of pieces) link.channel.write(piece);
  }

  /** (Re)sends everything not yet sent on the current link, with the same ids. */
  private flush(): void {
    for (const p of this.pending.values()) {
      if (!p.sent) {
        if (p.deadline === undefined && p.timer) {
          clearTimeout(p.timer);
          p.timer = undefined;
        }
        this.send(p);
      }
    }
  }

  // ---- tokens ----------------------------------------------------------------------

  private scheduleRefreshes(): void {
    for (const h of this.held) this.scheduleRefresh(h);
  }

  private scheduleRefresh(h: HeldToken): void {
    clearTimeout(h.timer);
    const g = effectiveGrant(h.token);
    if (g.exp >= g.maxExp) return;
    const margin = Math.min(this.o.refreshMarginMs, (g.exp - g.nbf) / 2);
    const at = Math.max(0, g.exp - margin - Date.now());
    h.timer = setTimeout(() => void this.refreshToken(h), Math.min(at, 2 ** 31 - 1));
    h.timer.unref();
  }

  /** Refreshes one held token now: token.refresh, then binds the fresh token on this session. */
  private async refreshToken(h: HeldToken): Promise<void> {
    try {
      const r = await this.call("token.refresh", `token://${h.token.claims.id}`, { token: h.bytes }, { caps: [h.bytes] });
      const fresh = (r.payload as { token: Uint8Array }).token;
      const token = decodeToken(fresh);
      const b = await this.call("token.bind", `token://${token.claims.id}`, { token: fresh }, { caps: [fresh] });
      h.bytes = fresh;
      h.token = token;
      h.handle = (b.payload as { handle: number }).handle;
      this.emit("tokenRefreshed", { id: token.claims.id, exp: effectiveGrant(token).exp });
      this.scheduleRefresh(h);
    } catch (e) {
      const err = new TokenRefreshError(`could not refresh token ${h.token.claims.id}: ${(e as Error).message}`, { cause: e });
      this.refreshError = err;
      this.emit("tokenRefreshFailed", err);
    }
  }

  /** The tokens currently held (refreshed copies replace the originals), as base64url text. */
  get heldTokens(): string[] {
    return this.held.map((h) => Buffer.from(h.bytes).toString("base64url"));
  }

  // ---- shutdown --------------------------------------------------------------------

  /** Says GOODBYE, waits for in-flight calls, then closes. */
  async close(): Promise<void> {
    if (this.state === "closed") return;
    const link = this.link;
    if (this.state !== "ready" || !link) {
      this.shutdown(new CancelledError("client closed"));
      return;
    }
    this.setState("closing");
    if (this.pending.size > 0) await new Promise((r) => this.once("drained", r));
    const closed = new Promise<void>((r) => link.channel.onClose(() => r()));
    link.channel.write(encodeMessage({ type: "GOODBYE", body: { reason: "client closing" } }));
    const t = setTimeout(() => link.channel.destroy(), 2000);
    await closed;
    clearTimeout(t);
    this.shutdown(new CancelledError("client closed"));
  }

  private shutdown(err: Error): void {
    if (this.link) {
      this.link.phase = "dead";
      this.link.channel.destroy();
      this.link.shm?.close();
    }
    clearInterval(this.timer);
    clearTimeout(this.healthyTimer);
    (this.connector as { close?: () => void }).close?.();
    for (const h of this.held) clearTimeout(h.timer);
    for (const p of [...this.pending.values()]) this.settle(p, undefined, err);
    for (const sub of this.subscriptions) sub.end();
    this.subscriptions.clear();
    if (this.state !== "closed") {
      this.setState("closed");
      this.emit("closed", err);
    }
  }
}
