import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import {
  attestationTranscript,
  type CapabilityRef,
  type CborMap,
  type CborValue,
  CodecError,
  decodeMessage,
  encodeIntent,
  encodeMessage,
  type Frame,
  FrameDecoder,
  HEADER_SIZE,
  type Identity,
  type Intent,
  type KEvent,
  KpipError,
  type Message,
  type RequestContext,
  type Response,
  type Status,
  SUPPORTED_VERSIONS,
  signBytes,
} from "@kpip/protocol";
import type { Channel, Connector } from "./connectors/connector.js";
import { UdsConnector } from "./connectors/uds.js";
import { CancelledError, KernelUnavailableError, ProtocolViolationError, TimeoutError } from "./errors.js";
import { loadIdentity } from "./identity.js";

export type ClientState = "connecting" | "handshaking" | "attesting" | "ready" | "closing" | "closed";

export interface ConnectOptions {
  /** Unix socket path of the kernel (or give `connector`). */
  socket?: string;
  connector?: Connector;
  /** The persona's identity, or the path of its identity file. */
  identity: Identity | string;
  /** Tokens to bind at attestation: wire bytes, or the base64url text `kpip token mint` prints. */
  tokens?: (Uint8Array | string)[];
  /** Workspace put in every request's context unless a call names another. */
  workspace?: string;
  /** Time allowed for connect + handshake. */
  connectTimeoutMs?: number;
}

export interface CallOptions {
  /** Relative deadline; it travels in the intent so the kernel stops work after it. */
  deadlineMs?: number;
  signal?: AbortSignal;
  workspace?: string;
  /** Capability references for this call (handles or inline tokens); default: every bound handle. */
  caps?: CapabilityRef[];
  traceparent?: string;
}

/** A non-failure answer. FAILURE is thrown as {@link KpipError}. */
export interface CallResult {
  status: Exclude<Status, "FAILURE">;
  payload: CborValue | undefined;
}

interface Pending {
  resolve: (r: Response) => void;
  reject: (e: Error) => void;
}

/**
 * The persona runtime's connection to a kernel.
 *
 * ```ts
 * const client = await KernelClient.connect({ socket: ".kpip/kernel.sock", identity: ".kpip/admin.identity" });
 * await client.call("storage.write", "obj://ws1/hello", { data: "hi" });
 * await client.close();
 * ```
 */
export class KernelClient extends EventEmitter {
  state: ClientState = "connecting";
  readonly persona: string;
  /** Random per client instance: with the request id it lets the kernel dedupe retries. */
  readonly instance = randomBytes(16);
  sessionId = "";
  kernelId = "";
  handles: number[] = [];
  /** Tokens the kernel refused to bind at attestation, with the reason. */
  refusedTokens: { index: number; code: string; message: string }[] = [];
  private channel: Channel | undefined;
  private readonly decoder = new FrameDecoder();
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private version = 0;
  private heartbeatMs = 5000;
  private lastSeen = Date.now();
  private timer: NodeJS.Timeout | undefined;
  private handshake: { resolve: () => void; reject: (e: Error) => void; helloBytes: Buffer } | undefined;
  private closeWaiter: (() => void) | undefined;
  private readonly identity: Identity;

  private constructor(
    private readonly connector: Connector,
    private readonly opts: ConnectOptions,
  ) {
    super();
    this.identity = typeof opts.identity === "string" ? loadIdentity(opts.identity) : opts.identity;
    this.persona = this.identity.persona;
  }

  /** Connects, handshakes and attests; resolves when the session is ready. */
  static async connect(opts: ConnectOptions): Promise<KernelClient> {
    const connector = opts.connector ?? (opts.socket ? new UdsConnector(opts.socket) : undefined);
    if (!connector) throw new TypeError("KernelClient.connect needs a socket path or a connector");
    const c = new KernelClient(connector, opts);
    await c.open();
    return c;
  }

  get transport(): string {
    return this.connector.transport;
  }

  private setState(s: ClientState): void {
    this.state = s;
    this.emit("state", s);
  }

  private async open(): Promise<void> {
    this.setState("connecting");
    const ch = await this.connector.connect();
    this.channel = ch;
    ch.onData((chunk) => this.onData(chunk));
    ch.onClose(() => this.onChannelClosed());
    this.setState("handshaking");
    const hello = encodeMessage({
      type: "HELLO",
      body: {
        versions: [...SUPPORTED_VERSIONS],
        persona: this.identity.persona,
        publicKey: this.identity.publicKey,
        instance: this.instance,
        features: [],
        client: "kpip-client/0.1.0",
      },
    });
    const done = new Promise<void>((resolve, reject) => {
      this.handshake = { resolve, reject, helloBytes: Buffer.from(hello.subarray(HEADER_SIZE)) };
    });
    ch.write(hello);
    const timeoutMs = this.opts.connectTimeoutMs ?? 10_000;
    let t: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      t = setTimeout(
        () => reject(new TimeoutError(`handshake with ${this.connector.address} took longer than ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      await Promise.race([done, timeout]);
    } catch (e) {
      ch.destroy();
      this.setState("closed");
      throw e;
    } finally {
      clearTimeout(t);
    }
    this.timer = setInterval(() => this.tick(), Math.max(20, Math.floor(this.heartbeatMs / 2)));
    this.timer.unref();
  }

  private onData(chunk: Uint8Array): void {
    this.lastSeen = Date.now();
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      this.abortAll(new ProtocolViolationError(`kernel sent a malformed frame: ${(e as Error).message}`, { cause: e }));
      return;
    }
    for (const f of frames) {
      let m: Message;
      try {
        m = decodeMessage(f);
      } catch (e) {
        if (!(e instanceof CodecError)) throw e;
        this.abortAll(new ProtocolViolationError(`kernel sent a malformed message: ${e.message}`, { cause: e }));
        return;
      }
      this.onMessage(m, f);
    }
  }

  private onMessage(m: Message, f: Frame): void {
    switch (m.type) {
      case "CHALLENGE": {
        const hs = this.handshake;
        if (!hs || this.state !== "handshaking") return this.violation("unexpected CHALLENGE");
        if (!SUPPORTED_VERSIONS.includes(m.body.version))
          return this.violation(`kernel chose unsupported version ${m.body.version}`);
        this.version = m.body.version;
        this.sessionId = m.body.session;
        this.kernelId = m.body.kernel;
        this.heartbeatMs = m.body.heartbeatMs;
        this.decoder.setMaxBody(m.body.limits.maxBody);
        const signature = signBytes(this.identity.privateKey, attestationTranscript(hs.helloBytes, f.body));
        this.setState("attesting");
        const tokens = (this.opts.tokens ?? []).map((t) => (typeof t === "string" ? Buffer.from(t.trim(), "base64url") : t));
        this.channel?.write(encodeMessage({ type: "ATTEST", body: { signature, tokens } }));
        return;
      }
      case "WELCOME":
        if (!this.handshake || this.state !== "attesting") return this.violation("unexpected WELCOME");
        this.handles = m.body.handles.filter((h) => h > 0);
        this.refusedTokens = m.body.refused ?? [];
        for (const r of this.refusedTokens) this.emit("tokenRefused", r);
        this.setState("ready");
        this.handshake.resolve();
        this.handshake = undefined;
        return;
      case "RESPONSE": {
        const p = this.pending.get(f.stream);
        if (!p) return;
        this.pending.delete(f.stream);
        p.resolve(m.body);
        if (this.pending.size === 0) this.closeWaiter?.();
        return;
      }
      case "EVENT":
        this.emit("event", m.body as KEvent);
        return;
      case "PING":
        this.channel?.write(encodeMessage({ type: "PONG", body: { seq: m.body.seq } }));
        return;
      case "PONG":
        return;
      case "GOODBYE":
        this.emit("goodbye", m.body.reason);
        return;
      case "ERROR": {
        const err = new KpipError(m.body.class, m.body.message, { code: m.body.code });
        if (this.handshake) {
          this.handshake.reject(err);
          this.handshake = undefined;
        }
        if (m.body.fatal) this.abortAll(err);
        return;
      }
      default:
        this.violation(`unexpected ${m.type} from the kernel`);
    }
  }

  private violation(msg: string): void {
    this.abortAll(new ProtocolViolationError(msg));
  }

  private tick(): void {
    if (this.state !== "ready" && this.state !== "closing") return;
    if (Date.now() - this.lastSeen > 3 * this.heartbeatMs) {
      this.abortAll(new KernelUnavailableError(`kernel silent for more than ${3 * this.heartbeatMs} ms`));
      return;
    }
    this.channel?.write(encodeMessage({ type: "PING", body: { seq: 0 } }));
  }

  /** Sends one intent and waits for its answer. FAILURE throws {@link KpipError}. */
  async call(op: string, target: string, args: CborMap = {}, opts: CallOptions = {}): Promise<CallResult> {
    const r = await this.request({ op, target, args }, opts);
    if (r.status === "FAILURE") {
      throw new KpipError(r.error ?? "INTERNAL", r.message ?? "request failed", { requestId: r.id });
    }
    return { status: r.status, payload: r.payload };
  }

  /** Sends an intent and returns the raw response, FAILURE included. */
  request(intent: Intent, opts: CallOptions = {}): Promise<Response> {
    if (this.state !== "ready") {
      return Promise.reject(new KernelUnavailableError(`client is ${this.state}, not ready`));
    }
    if (opts.signal?.aborted) return Promise.reject(new CancelledError("call aborted before it was sent"));
    const full: Intent = { ...intent };
    if (opts.deadlineMs !== undefined) full.constraints = { ...full.constraints, deadline: Date.now() + opts.deadlineMs };
    const bytes = encodeIntent(full);
    const id = this.nextId++;
    const stream = id % 0x100000000;
    const context: RequestContext = { persona: this.persona };
    const ws = opts.workspace ?? this.opts.workspace;
    if (ws) context.workspace = ws;
    if (opts.traceparent) context.traceparent = opts.traceparent;
    return new Promise<Response>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = () => {
        clearTimeout(timer);
        opts.signal?.removeEventListener("abort", onAbort);
      };
      const onAbort = () => {
        this.pending.delete(stream);
        cleanup();
        reject(new CancelledError("call aborted"));
      };
      this.pending.set(stream, {
        resolve: (r) => {
          cleanup();
          resolve(r);
        },
        reject: (e) => {
          cleanup();
          reject(e);
        },
      });
      if (opts.deadlineMs !== undefined) {
        timer = setTimeout(() => {
          this.pending.delete(stream);
          cleanup();
          reject(new TimeoutError(`no answer within ${opts.deadlineMs} ms`));
        }, opts.deadlineMs);
      }
      opts.signal?.addEventListener("abort", onAbort, { once: true });
      this.channel?.write(
        encodeMessage(
          {
            type: "REQUEST",
            body: {
              version: this.version,
              persona: this.persona,
              id,
              intent: bytes,
              context,
              caps: opts.caps ?? [...this.handles],
            },
          },
          stream,
        ),
      );
    });
  }

  /** Says GOODBYE, waits for in-flight calls, then closes. */
  async close(): Promise<void> {
    if (this.state === "closed") return;
    if (this.state !== "ready") {
      this.abortAll(new KernelUnavailableError("client closed"));
      return;
    }
    this.setState("closing");
    if (this.pending.size > 0) await new Promise<void>((r) => (this.closeWaiter = r));
    const closed = new Promise<void>((r) => this.once("closed", r));
    this.channel?.write(encodeMessage({ type: "GOODBYE", body: { reason: "client closing" } }));
    const t = setTimeout(() => this.channel?.destroy(), 2000);
    await closed;
    clearTimeout(t);
  }

  private onChannelClosed(): void {
    this.abortAll(new KernelUnavailableError("connection to the kernel closed"));
  }

  private abortAll(err: Error): void {
    if (this.handshake) {
      this.handshake.reject(err);
      this.handshake = undefined;
    }
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    clearInterval(this.timer);
    this.channel?.destroy();
    if (this.state !== "closed") {
      this.setState("closed");
      this.emit("closed", err);
    }
  }
}
