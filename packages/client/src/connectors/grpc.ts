import type * as grpc from "@grpc/grpc-js";
import { GRPC_MAX_MESSAGE_BYTES, TurnBatcher, writeMessages } from "@kpip/protocol";
import { InsecureTransportError, KernelUnavailableError } from "../errors.js";
import type { Channel, Connector } from "./connector.js";
import { untrustedListener } from "./listener-trust.js";
import { untrustedSocket } from "./socket-trust.js";

/** How to reach a kernel's gRPC transport. */
export interface GrpcConnectorOptions {
  /** "host:port" the kernel listens on (`--grpc-listen`). */
  address: string;
  /** PEM CA that signed the kernel's certificate (default: the system roots). */
  ca?: string | Buffer;
  /** PEM client certificate chain and key, for a kernel that requires mTLS. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** The name the kernel's certificate must carry, when it differs from the address's host. */
  serverName?: string;
  /**
   * Plaintext, for a kernel listening on loopback without TLS: only to a loopback address
   * (`127.0.0.1`, `[::1]`, `localhost`) or a `unix:` path, else {@link InsecureTransportError}
   * (an abstract `unix-abstract:` name has no owner: anyone may take it). Whoever holds the
   * port or socket must be this user, root or `kernelUid` (`UntrustedSocketError`).
   */
  insecure?: boolean;
  /**
   * With `insecure` on a loopback TCP address: the uid the kernel runs as, when it is not this
   * user's. Any local user can listen on a loopback port, so a client (not root) refuses a port
   * held by a uid other than its own, root's or this one (`UntrustedSocketError`, nothing sent).
   */
  kernelUid?: number;
  /**
   * Largest gRPC message received and sent, in bytes (default and most 1 MiB,
   * GRPC_MAX_MESSAGE_BYTES: PROTOCOL §3.6 bounds a message at that in both directions). grpc-js
   * holds a message whole, inflated when the peer compressed it, before the client reads a byte of
   * it: the bound is what a peer posing as a kernel can make the client hold. A whole number from
   * 1 (the constructor throws RangeError otherwise).
   */
  maxMessageBytes?: number;
  /** How long to wait for the stream to open (default 5000 ms). */
  connectTimeoutMs?: number;
}

const bytes = (b: Buffer) => b;

// grpc-js takes ~90 ms to load: only a client that actually dials gRPC pays for it.
let grpcModule: Promise<typeof grpc> | undefined;
const loadGrpc = () => {
  grpcModule ??= import("@grpc/grpc-js");
  return grpcModule;
};
const SESSION = "/kpip.v1.Kernel/Session";
/** Addresses plaintext may go to: loopback as PROTOCOL §3.6 names it, or a Unix socket. */
const LOCAL_ADDRESS = /^(?:(?:127\.0\.0\.1|\[::1\]|localhost):\d{1,5}|unix:.+)$/;

/**
 * Connects over gRPC (PROTOCOL §4.5): one bidirectional stream per session carrying the KPIP
 * frame stream in opaque chunks. The persona still attests in KPIP; TLS authenticates the
 * kernel (and, with a client certificate, the machine).
 */
export class GrpcConnector implements Connector {
  readonly transport = "grpc";
  readonly address: string;
  private client: grpc.Client | undefined;

  constructor(private readonly opts: GrpcConnectorOptions) {
    this.address = opts.address;
    // Only a lower bound: -1 is grpc-js's "unlimited" (the bound undone), and 0 or less made the
    // split of what is sent (writeMessages) loop for ever.
    const max = opts.maxMessageBytes;
    if (max !== undefined && !(Number.isSafeInteger(max) && max >= 1))
      throw new RangeError(`maxMessageBytes must be a whole number of bytes from 1 to ${GRPC_MAX_MESSAGE_BYTES}, not ${max}`);
    // TLS is required off loopback (PROTOCOL §3.6): a kernel will not listen there in plaintext,
    // so plaintext to such an address reaches something else — a proxy or whoever is on the path.
    if (opts.insecure && !LOCAL_ADDRESS.test(opts.address))
      throw new InsecureTransportError(
        opts.address.startsWith("unix-abstract:")
          ? `gRPC without TLS to ${opts.address}: an abstract Unix socket name has no owner, any local user may take it; use a unix: path or a loopback address`
          : `gRPC without TLS to ${opts.address}: plaintext is for loopback only (127.0.0.1, [::1], localhost); give the kernel's CA instead`,
      );
  }

  /**
   * Counts close() calls: a connect() that began before a close() ends with it (its wait for the
   * channel at once), and never opens a channel after it — grpc-js loads asynchronously the first
   * time, and a newer connect() may own a fresh channel by then.
   */
  private closes = 0;

  private newClient(g: typeof grpc): grpc.Client {
    const o = this.opts;
    const toBuf = (v: string | Buffer | undefined) => (v === undefined ? null : Buffer.isBuffer(v) ? v : Buffer.from(v));
    const creds = o.insecure ? g.credentials.createInsecure() : g.credentials.createSsl(toBuf(o.ca), toBuf(o.key), toBuf(o.cert));
    const max = Math.min(GRPC_MAX_MESSAGE_BYTES, o.maxMessageBytes ?? GRPC_MAX_MESSAGE_BYTES);
    const options: grpc.ChannelOptions = {
      "grpc.max_receive_message_length": max,
      "grpc.max_send_message_length": max,
      // Identity only: the kernel refuses compressed messages (PROTOCOL §3.6), and grpc-js's default is none.
      "grpc.default_compression_algorithm": g.compressionAlgorithms.identity,
    };
    if (o.serverName) options["grpc.ssl_target_name_override"] = o.serverName;
    return new g.Client(o.address, creds, options);
  }

  async connect(callerDeadline?: number): Promise<Channel> {
    const closes = this.closes;
    const g = await loadGrpc();
    if (this.closes !== closes) throw this.closedWhileConnecting();
    // A unix: path is checked as the Unix socket's is (socket-trust.ts), before it is dialled.
    const path = unixPath(this.address);
    const untrustedPath = path !== undefined && untrustedSocketPath(path);
    if (untrustedPath) throw untrustedPath;
    this.client ??= this.newClient(g);
    const client = this.client;
    const deadline = Math.min(Date.now() + (this.opts.connectTimeoutMs ?? 5000), callerDeadline ?? Number.POSITIVE_INFINITY);
    try {
      await this.ready(g, client, deadline, closes);
    } catch (e) {
      // Closed meanwhile: that close() ended the wait, and a newer connect() may own this.client.
      if (this.closes !== closes) throw this.closedWhileConnecting();
      // A fresh channel next time: a failed TLS handshake is not retried on the same one.
      this.close();
      throw new KernelUnavailableError(`no kernel answers gRPC at ${this.address} (${(e as Error).message})`, { cause: e });
    }
    if (this.closes !== closes) throw this.closedWhileConnecting();
    // Connected, and nothing of KPIP sent yet: whose listener is it?
    const untrusted = this.plaintextTcp() && untrustedOwner(this.address, this.opts.kernelUid);
    if (untrusted) {
      this.close();
      throw untrusted;
    }
    const call = client.makeBidiStreamRequest(SESSION, bytes, bytes);
    return new GrpcChannel(call, Math.min(GRPC_MAX_MESSAGE_BYTES, this.opts.maxMessageBytes ?? GRPC_MAX_MESSAGE_BYTES));
  }

  /** Plaintext over TCP (loopback, the only plaintext allowed): a port any local user may hold. */
  private plaintextTcp(): boolean {
    return this.opts.insecure === true && !this.address.startsWith("unix");
  }

  private closedWhileConnecting(): KernelUnavailableError {
    return new KernelUnavailableError(`gRPC connector to ${this.address} closed while connecting`);
  }

  /**
   * Waits until `client`'s channel is READY, as grpc-js's waitForReady does, except that a close()
   * (one since `closes`, the count its connect() began with) ends the wait at once. grpc-js's own, when the channel is closed under it, asks the closed
   * channel to connect again (getConnectivityState(true) leaves SHUTDOWN): the channel kept
   * dialling, and the wait's deadline timer kept a client's process alive after close(), for
   * connectTimeoutMs or, had the kernel come back meanwhile, for ever, with a live session.
   */
  private ready(g: typeof grpc, client: grpc.Client, deadline: number, closes: number): Promise<void> {
    const channel = client.getChannel();
    return new Promise<void>((resolve, reject) => {
      const check = (err?: Error) => {
        if (this.closes !== closes) return reject(new Error("closed"));
        if (err) return reject(new Error("Failed to connect before the deadline"));
        const state = channel.getConnectivityState(true);
        if (state === g.connectivityState.READY) return resolve();
        try {
          channel.watchConnectivityState(state, deadline, check);
        } catch (e) {
          reject(e as Error);
        }
      };
      check();
    });
  }

  /** Closes the underlying HTTP/2 channel; a connect() under way ends with KernelUnavailableError. */
  close(): void {
    this.closes++;
    const client = this.client;
    // Unset first: the channel's SHUTDOWN runs the pending waits' callbacks, which must see it closed.
    this.client = undefined;
    client?.close();
  }
}

/** The path of a `unix:` address (grpc's forms: `unix:path`, `unix:///absolute/path`). */
function unixPath(address: string): string | undefined {
  if (!address.startsWith("unix:")) return undefined;
  const rest = address.slice("unix:".length);
  return rest.startsWith("//") ? rest.slice(2) : rest;
}

/** A `unix:` address's socket, checked as the Unix socket connector's is: root is not checked. */
function untrustedSocketPath(path: string) {
  const me = process.geteuid?.();
  if (me === undefined || me === 0) return undefined;
  return untrustedSocket(path, me);
}

/**
 * The listener's owner checked for a client that is not root, as the Unix socket's is
 * (socket-trust.ts): root may reach any user's kernel.
 */
function untrustedOwner(address: string, kernelUid: number | undefined) {
  const me = process.geteuid?.();
  if (me === undefined || me === 0) return undefined;
  return untrustedListener(address, me, kernelUid);
}

/** One gRPC stream as a channel: the writes of one turn go out as one message. */
class GrpcChannel implements Channel {
  readonly transport = "grpc";
  private readonly out: TurnBatcher;
  private closed = false;
  private readonly closeCbs: ((err?: Error) => void)[] = [];
  constructor(
    private readonly call: grpc.ClientDuplexStream<Buffer, Buffer>,
    /** Largest message sent: 1 MiB (PROTOCOL §3.6), or one frame at the session's maxBody when smaller. */
    private maxMessage: number,
  ) {
    this.out = new TurnBatcher(
      // Two pipelined writes near maxBody in one message went over the kernel's limit and ended the session.
      (chunks, _bytes, done) => {
        // Several chunks are joined into a copy (joinChunks); one is copied here only when a writer waits on it.
        const own = done && chunks.length === 1 ? [Buffer.from(chunks[0] as Uint8Array)] : chunks;
        writeMessages(own, this.maxMessage, (m) => call.write(m));
        done?.();
        return false;
      },
      (fn) => process.nextTick(fn),
    );
    let error: Error | undefined;
    const closed = () => {
      if (this.closed) return;
      this.closed = true;
      this.out.stop();
      for (const cb of this.closeCbs) cb(error);
    };
    call.on("error", (e: Error) => {
      error = e;
      closed();
    });
    call.on("end", closed);
    call.on("close", closed);
  }

  write(data: Uint8Array): void {
    if (!this.closed) this.out.write(data);
  }

  afterWrites(cb: () => void): void {
    this.out.afterWrites(cb);
  }

  unsent(): number {
    return this.out.pending + this.call.writableLength;
  }

  limitMessages(bytes: number): void {
    this.maxMessage = Math.min(this.maxMessage, bytes);
  }

  end(): void {
    if (this.closed) return;
    process.nextTick(() => {
      this.out.flushNow();
      this.call.end();
    });
  }

  destroy(): void {
    if (this.closed) return;
    this.call.cancel();
  }

  onData(cb: (chunk: Uint8Array) => void): void {
    this.call.on("data", cb);
  }

  onClose(cb: (err?: Error) => void): void {
    this.closeCbs.push(cb);
  }
}

/**
 * Tries connectors in order and uses the first that connects, e.g. the Unix socket, then
 * gRPC. `transport` names the one in use once connected.
 */
export class FallbackConnector implements Connector {
  readonly address: string;
  private last: Connector;

  constructor(private readonly connectors: Connector[]) {
    if (connectors.length === 0) throw new TypeError("FallbackConnector needs at least one connector");
    this.last = connectors[0] as Connector;
    this.address = connectors.map((c) => `${c.transport}:${c.address}`).join(", then ");
  }

  get transport(): string {
    return this.last.transport;
  }

  async connect(deadline?: number): Promise<Channel> {
    const errors: string[] = [];
    for (const c of this.connectors) {
      try {
        const ch = await c.connect(deadline);
        this.last = c;
        return ch;
      } catch (e) {
        errors.push(`${c.transport}: ${(e as Error).message}`);
      }
    }
    throw new KernelUnavailableError(`no transport reached the kernel — ${errors.join("; ")}`);
  }

  close(): void {
    for (const c of this.connectors) (c as { close?: () => void }).close?.();
  }
}
