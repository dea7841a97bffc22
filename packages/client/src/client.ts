import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { readFileSync } from "node:fs";
import { type CborMap, DEFAULT_LIMITS, type Intent, type KEvent, KpipError, parseIdentity, type Response } from "@kpip/protocol";
import { CallTable } from "./calls.js";
import type { Connector } from "./connectors/connector.js";
import { InheritedConnector } from "./connectors/uds.js";
import { Dialer } from "./dialer.js";
import { CancelledError, KernelUnavailableError, TimeoutError } from "./errors.js";
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
import { Link } from "./link.js";
import { type OpCall, type OpRequest, opCall, opRequest } from "./op-call.js";
import {
  type CallOptions,
  type CallResult,
  type ClientState,
  type ConnectOptions,
  type ResolvedOptions,
  resolveOptions,
} from "./options.js";
import type { SubscribeOptions, Subscription } from "./subscription.js";
import { Subscriptions } from "./subscriptions.js";
import { TokenRefresher } from "./token-refresher.js";

/** The defaults of `call`, shared (never written to). */
const NO_ARGS: CborMap = Object.freeze({});
const NO_OPTIONS: CallOptions = Object.freeze({});

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
 * `tokenRefused`, `goodbye`, `reconnectFailed`, `resubscribed`, `resubscribeFailed`, `closed`.
 *
 * A facade over its parts: the {@link Link} (one connection's handshake and frame loop), the
 * {@link Dialer} (connect and reconnect with backoff), the {@link CallTable} (calls in flight,
 * retries, deadlines), the {@link TokenRefresher} and the {@link Subscriptions}.
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
  readonly storage = new StorageApi(
    this.call.bind(this),
    () => this.link?.maxBody ?? 16 * 1024 * 1024,
    () => this.connections,
  );
  readonly tokens = new TokensApi(this.call.bind(this));
  readonly events = new EventsApi(this.call.bind(this), this.subscribe.bind(this));
  readonly compute = new ComputeApi(this.call.bind(this));
  readonly ops = new OpsApi(this.call.bind(this));
  readonly resources = new ResourcesApi(this.call.bind(this));
  readonly agents = new AgentsApi(this.call.bind(this));
  readonly personas = new PersonasApi(this.call.bind(this));
  /** Any op of the catalogue (`@kpip/protocol`), typed by its definition: `client.op(storageStat, "obj://ws/a", {})`. */
  readonly op: OpCall = opCall(this.call.bind(this));
  /** {@link request} typed by the op catalogue: `client.opRequest(storageList, target, args)`; FAILURE is a value. */
  readonly opRequest: OpRequest = opRequest(this.request.bind(this));
  private link: Link | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  /** Aborted when the client shuts down: a handshake under way stops waiting for its WELCOME or its timeout. */
  private readonly ended = new AbortController();
  private readonly calls: CallTable;
  private readonly held: TokenRefresher;
  private readonly subs: Subscriptions;
  private readonly dialer: Dialer;

  private constructor(private readonly o: ResolvedOptions) {
    super();
    this.persona = o.identity.persona;
    const call = this.call.bind(this);
    this.held = new TokenRefresher(o.tokens, o.refreshMarginMs, call, {
      refreshed: (info) => this.emit("tokenRefreshed", info),
      failed: (err) => this.emit("tokenRefreshFailed", err),
    });
    this.calls = new CallTable(o, {
      persona: this.persona,
      readyLink: () => (this.link?.phase === "ready" && this.state !== "closed" ? this.link : undefined),
      handles: () => this.held.handles,
      reattest: () => this.link?.fail(new KernelUnavailableError("re-attesting after AUTH")),
    });
    this.subs = new Subscriptions(
      call,
      () => this.state === "ready",
      {
        resubscribed: (pattern) => this.emit("resubscribed", pattern),
        resubscribeFailed: (info) => this.emit("resubscribeFailed", info),
      },
      () => this.connections,
    );
    this.dialer = new Dialer(o, {
      establish: (ms) => this.establish(ms),
      reconnecting: () => this.state === "reconnecting",
      closed: () => this.state === "closed",
      retrying: (first) => this.setState(first ? "connecting" : "reconnecting"),
      failed: (e) => this.emit("reconnectFailed", e),
      giveUp: (e) => this.shutdown(e),
    });
    this.on("error", () => {});
  }

  /** Connects, handshakes and attests; resolves when the session is ready. */
  static async connect(opts: ConnectOptions): Promise<KernelClient> {
    const c = new KernelClient(resolveOptions(opts));
    try {
      await c.dialer.first();
    } catch (e) {
      c.shutdown(e as Error);
      throw e;
    }
    c.heartbeat = setInterval(() => c.link?.tick(Date.now()), 50);
    c.heartbeat.unref();
    c.held.start();
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
    return [...this.held.handles];
  }

  /** The tokens currently held (refreshed copies replace the originals), as base64url text. */
  get heldTokens(): string[] {
    return this.held.text;
  }

  /**
   * The largest request body the kernel accepts on the current session (CHALLENGE.limits.maxBody),
   * in bytes: a caller can refuse a larger input before reading it. Larger objects: storage.putLarge.
   */
  get maxBody(): number {
    return this.link?.maxBody ?? DEFAULT_LIMITS.maxBodyBytes;
  }

  /** Calls waiting for an answer (sent or queued). */
  get inFlight(): number {
    return this.calls.size;
  }

  private get connector(): Connector {
    return this.o.connector;
  }

  // ---- calls -----------------------------------------------------------------------

  /**
   * Sends one intent and waits for its answer. FAILURE throws {@link KpipError}. Byte strings of
   * 64 KiB or more in `args` are sent from the caller's own memory, not copied: do not change
   * them until the promise settles. Once it has settled they are the caller's again: a call
   * ended before its answer (an abort, a local deadline, the wait for a kernel) rejects only
   * after the connection has let go of them (handed them to the OS, or closed), so while the
   * socket is backed up that rejection waits for it to drain or for the connection to be
   * dropped (a silent kernel: the heartbeat). A custom connector's channel without
   * `afterWrites` is taken to let go at once.
   */
  call(op: string, target: string, args: CborMap = NO_ARGS, opts: CallOptions = NO_OPTIONS): Promise<CallResult> {
    // One promise from here to the answer: the call table settles it with the result or the KpipError.
    return this.refused() ?? this.calls.call(op, target, args, opts, this.state !== "ready");
  }

  /** Sends an intent and returns the raw response, FAILURE included (after retries). */
  request(intent: Intent, opts: CallOptions = NO_OPTIONS): Promise<Response> {
    return this.refused() ?? this.calls.request(intent, opts, this.state !== "ready");
  }

  /** Why a call cannot start now (a rejected promise), or undefined. */
  private refused(): Promise<never> | undefined {
    if (this.state === "closed" || this.state === "closing") {
      return Promise.reject(new KernelUnavailableError(`client is ${this.state}`));
    }
    const refreshFailure = this.held.takeFailure();
    if (refreshFailure) return Promise.reject(refreshFailure);
    if (this.state !== "ready" && this.o.failFast) {
      return Promise.reject(new KernelUnavailableError(`kernel unavailable (client is ${this.state})`));
    }
    return undefined;
  }

  /**
   * Subscribes to topic:// names matching `pattern` (`*` one segment, `**` any depth). The
   * result is an async iterable of events with a buffer bounded in events and bytes
   * (`bufferSize`, default 1000; `bufferBytes`, default 16 MiB: past either the oldest are
   * dropped into the next event's `gap`); it survives reconnects and ends with `unsubscribe()`,
   * `break`, or `close()`.
   */
  subscribe(pattern: string, opts: SubscribeOptions = {}): Promise<Subscription> {
    return this.subs.subscribe(pattern, opts);
  }

  /**
   * Watches objects matching an obj:// pattern (`storage.watch`, authorized as `storage.read` on
   * every object the pattern can match): each write or delete arrives as an event with data
   * `{ uri, generation, kind: "write" | "delete" }`. Like {@link subscribe} it survives
   * reconnects; it ends when unsubscribed, closed, or when no held capability allows it any more.
   */
  watch(pattern: string, opts: SubscribeOptions = {}): Promise<Subscription> {
    return this.subs.watch(pattern, opts);
  }

  // ---- links -----------------------------------------------------------------------

  private setState(s: ClientState): void {
    if (this.state === s) return;
    this.state = s;
    // With the transport in use, so a fallback from the socket to gRPC is visible as it happens.
    this.emit("state", s, this.transport);
  }

  /** One attempt: connect, HELLO, CHALLENGE, ATTEST, WELCOME; then unsent calls go out. */
  private async establish(timeoutMs: number): Promise<void> {
    this.setState(this.connections === 0 ? "connecting" : "reconnecting");
    const channel = await this.connector.connect(Date.now() + timeoutMs);
    if (this.ended.signal.aborted) {
      // Closed while the connector dialled: this channel would bring the client back to life.
      channel.destroy();
      throw new CancelledError("client closed");
    }
    const link = new Link(
      channel,
      {
        identity: this.o.identity,
        instance: this.instance,
        tokens: () => this.held.bytes,
        measurements: this.o.measurements,
        shm: this.o.shm,
        maxBody: this.o.maxBody,
      },
      {
        attesting: (l) => {
          this.sessionId = l.session;
          this.kernelId = l.kernel;
          this.setState("attesting");
        },
        response: (stream, r) => this.calls.onResponse(stream, r),
        event: (e: KEvent, size: number) => {
          this.subs.dispatch(e, size);
          this.emit("event", e);
        },
        goodbye: (reason) => this.emit("goodbye", reason),
        outstanding: () => this.calls.sentCount(),
        tooLarge: (l) => this.calls.refuseLargest(l),
        lost: (l, err) => this.onLinkLost(l, err),
      },
    );
    this.link = link;
    this.setState("handshaking");
    let t: NodeJS.Timeout | undefined;
    let onEnded: (() => void) | undefined;
    const timeout = new Promise<never>((_, reject) => {
      const msg = `handshake with ${this.connector.address} took longer than ${timeoutMs} ms`;
      t = setTimeout(() => reject(new TimeoutError(msg)), timeoutMs);
      // A killed link's handshake never settles: without this its timer held a closed client's process.
      onEnded = () => reject(new CancelledError("client closed"));
      this.ended.signal.addEventListener("abort", onEnded, { once: true });
    });
    try {
      const welcome = await Promise.race([link.ready, timeout]);
      // WELCOME came as the client closed: the session is not taken up.
      if (this.ended.signal.aborted) throw new CancelledError("client closed");
      this.held.bound(welcome.handles);
      this.refusedTokens = welcome.refused;
      for (const r of this.refusedTokens) this.emit("tokenRefused", r);
    } catch (e) {
      link.kill();
      throw e;
    } finally {
      clearTimeout(t);
      if (onEnded) this.ended.signal.removeEventListener("abort", onEnded);
    }
    this.connections++;
    this.dialer.connected();
    this.setState("ready");
    this.calls.flush();
    if (this.connections > 1) void this.subs.resubscribe();
  }

  private onLinkLost(link: Link, err: Error): void {
    if (link !== this.link) return;
    if (err instanceof KpipError && err.errorClass === "AUTH") {
      // The persona may no longer attest (e.g. PERSONA_REMOVED): reconnecting cannot help.
      this.shutdown(err);
      return;
    }
    this.calls.linkLost();
    if (this.state === "closing" || this.state === "closed" || !this.o.reconnect) {
      this.shutdown(err);
      return;
    }
    if (this.o.failFast) this.calls.failAll(new KernelUnavailableError(`kernel unavailable: ${err.message}`, { cause: err }));
    this.setState("reconnecting");
    void this.dialer.again();
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
    await this.calls.drained();
    const closed = new Promise<void>((r) => link.channel.onClose(() => r()));
    link.send({ type: "GOODBYE", body: { reason: "client closing" } });
    const t = setTimeout(() => link.channel.destroy(), 2000);
    await closed;
    clearTimeout(t);
    this.shutdown(new CancelledError("client closed"));
  }

  private shutdown(err: Error): void {
    this.ended.abort();
    this.link?.kill();
    clearInterval(this.heartbeat);
    this.dialer.stop();
    (this.connector as { close?: () => void }).close?.();
    this.held.stop();
    this.calls.failAll(err);
    this.subs.endAll();
    if (this.state !== "closed") {
      this.setState("closed");
      this.emit("closed", err);
    }
  }
}
