/**
 * The wire-level peer and helpers of the tests and the abuse bench: a hand-driven peer on a raw
 * socket, REQUEST frames built by hand, a HELLO with any key and instance, audit polling. One
 * implementation of each: RawPeer's methods are these functions. No test runner hooks here
 * (the bench imports it).
 */
import net from "node:net";
import type * as grpc from "@grpc/grpc-js";
import {
  attestationTranscript,
  decodeMessage,
  encodeIntent,
  encodeMessage,
  FrameDecoder,
  HEADER_SIZE,
  type Identity,
  type Intent,
  type Message,
  signBytes,
} from "@kpip/protocol";
import { until } from "@kpip/protocol/testing";
import type { Kernel, KernelOptions } from "../src/index.js";
import type { AuditRow } from "../src/store/types.js";
import { adminIdentity, removeHome, startKernel, type TestKernel } from "./harness.js";

export interface RequestOptions {
  /** The request's persona (default admin). */
  persona?: string;
  /** The context's persona (default the request's). */
  ctxPersona?: string;
  workspace?: string;
  domain?: string;
  caps?: (number | Uint8Array)[];
  version?: number;
}

/** One REQUEST frame (stream = id), from an intent or hand-made intent bytes. */
export function requestFrame(id: number, intent: Intent | Uint8Array, opts: RequestOptions = {}): Uint8Array {
  const persona = opts.persona ?? "admin";
  const context: { persona: string; workspace?: string; domain?: string } = { persona: opts.ctxPersona ?? persona };
  if (opts.workspace !== undefined) context.workspace = opts.workspace;
  if (opts.domain !== undefined) context.domain = opts.domain;
  return encodeMessage(
    {
      type: "REQUEST",
      body: {
        version: opts.version ?? 1,
        persona,
        id,
        intent: intent instanceof Uint8Array ? intent : encodeIntent(intent),
        context,
        caps: opts.caps ?? [1],
      },
    },
    id,
  );
}

/** A HELLO frame (no features), `extra` fields added to its body. */
export function helloFrame(
  persona: string,
  publicKey: Uint8Array,
  instance: Uint8Array = Buffer.alloc(16, 7),
  versions = [1],
  extra: { maxBody?: number } = {},
): Buffer {
  return encodeMessage({ type: "HELLO", body: { versions, persona, publicKey, instance, features: [], ...extra } });
}

/**
 * Sends a HELLO naming `persona` with `publicKey` (any key, registered or not) and waits for
 * the CHALLENGE. Returns it, and the HELLO and CHALLENGE body bytes the transcript is built from.
 */
export async function helloAs(
  p: RawPeer,
  persona: string,
  publicKey: Uint8Array,
  instance: Uint8Array = Buffer.alloc(16, 7),
  versions = [1],
  extra: { maxBody?: number } = {},
): Promise<{ session: string; helloBytes: Buffer; challengeBytes: Buffer; challenge: Extract<Message, { type: "CHALLENGE" }> }> {
  const f = helloFrame(persona, publicKey, instance, versions, extra);
  p.send(f);
  const challenge = await p.next("CHALLENGE");
  return {
    session: challenge.body.session,
    helloBytes: Buffer.from(f.subarray(HEADER_SIZE)),
    challengeBytes: Buffer.from(encodeMessage(challenge).subarray(HEADER_SIZE)),
    challenge,
  };
}

/** A correct ATTEST signature by `signer` for this HELLO/CHALLENGE pair. */
export function attestSignature(signer: Identity, helloBytes: Buffer, challengeBytes: Buffer): Buffer {
  return signBytes(signer.privateKey, attestationTranscript(helloBytes, challengeBytes));
}

/** A hand-driven peer on a raw socket: sends any bytes, collects decoded frames. */
export class RawPeer {
  readonly frames: { msg: Message; stream: number }[] = [];
  closed = false;
  decodeError: Error | undefined;
  private readonly decoder = new FrameDecoder();
  private helloBytes: Buffer | undefined;
  private keepalive: NodeJS.Timeout | undefined;
  private pingsAnswered: (() => number) | undefined;
  version = 1;

  private constructor(readonly sock: net.Socket) {
    sock.on("data", (d) => {
      try {
        for (const f of this.decoder.push(d)) this.frames.push({ msg: decodeMessage(f), stream: f.stream });
      } catch (e) {
        this.decodeError = e as Error;
      }
    });
    sock.on("close", () => {
      this.closed = true;
    });
    sock.on("error", () => {});
  }

  static connect(path: string): Promise<RawPeer> {
    return new Promise((resolve, reject) => {
      const s = net.connect(path);
      s.once("connect", () => resolve(new RawPeer(s)));
      s.once("error", reject);
    });
  }

  /** Bytes (or hex) as they are; nothing once the socket no longer takes writes. */
  send(bytes: Uint8Array | string): void {
    if (!this.sock.writable) return;
    this.sock.write(typeof bytes === "string" ? Buffer.from(bytes, "hex") : bytes);
  }

  sendMessage(m: Message, stream = 0): void {
    const f = encodeMessage(m, stream);
    if (m.type === "HELLO") this.helloBytes = Buffer.from(f.subarray(HEADER_SIZE));
    this.send(f);
  }

  /**
   * The first frame of `type` received (taken from `frames`); fails at once when the connection
   * closed without one. The wait is long: a handshake's WELCOME took seconds on a machine loaded 15 deep.
   */
  async next<T extends Message["type"]>(type: T, ms = 30_000): Promise<Extract<Message, { type: T }>> {
    const found = await until(
      () => {
        const f = this.frames.find((x) => x.msg.type === type);
        if (!f && this.closed) throw new Error(`no ${type} (the connection closed)`);
        return f;
      },
      ms,
      type,
    );
    this.frames.splice(this.frames.indexOf(found), 1);
    return found.msg as Extract<Message, { type: T }>;
  }

  /** HELLO only; returns the CHALLENGE and its body bytes. */
  async hello(
    identity: Identity,
    versions = [1],
  ): Promise<{ challenge: Extract<Message, { type: "CHALLENGE" }>; bytes: Buffer }> {
    const h = await helloAs(this, identity.persona, identity.publicKey, undefined, versions);
    this.helloBytes = h.helloBytes;
    return { challenge: h.challenge, bytes: h.challengeBytes };
  }

  /** The signature a correct persona would send for this session. */
  sign(identity: Identity, challengeBytes: Buffer): Buffer {
    return attestSignature(identity, this.helloBytes as Buffer, challengeBytes);
  }

  /** A peer past the handshake as `t`'s admin, holding the admin token. */
  static async admin(t: TestKernel): Promise<RawPeer> {
    const p = await RawPeer.connect(t.k.socketPath);
    await p.handshake(adminIdentity(t.k), [Buffer.from(t.adminToken, "base64url")]);
    return p;
  }

  /** Full handshake; resolves with the WELCOME. */
  async handshake(identity: Identity, tokens: Uint8Array[] = []): Promise<Extract<Message, { type: "WELCOME" }>> {
    const { bytes } = await this.hello(identity);
    this.sendMessage({ type: "ATTEST", body: { signature: this.sign(identity, bytes), tokens } });
    return this.next("WELCOME");
  }

  /** A REQUEST on stream `id`, at this peer's protocol version. */
  request(id: number, intent: Intent | Uint8Array, opts: RequestOptions & { persona: string }): void {
    this.send(requestFrame(id, intent, { version: this.version, ...opts }));
  }

  /** The RESPONSE to request `id` (taken from `frames`); fails at once when the connection closed without it. */
  async response(id: number, ms = 30_000) {
    const f = await until(
      () => {
        const r = this.frames.find((x) => x.msg.type === "RESPONSE" && (x.msg.body as { id: number }).id === id);
        // Nothing arrives after close: polling on would only hold the test (and its file's process) until `ms`.
        if (!r && this.closed) throw new Error(`no response ${id} (the connection closed)`);
        return r;
      },
      ms,
      `response ${id}`,
    );
    this.frames.splice(this.frames.indexOf(f), 1);
    return f.msg.body as { status: string; error?: string; message?: string; payload?: unknown; id: number };
  }

  /**
   * A system.health round trip on stream `id`: every answer the kernel wrote before it is in
   * `frames` once this resolves (one connection's frames arrive in order).
   */
  async barrier(id: number): Promise<void> {
    this.send(requestFrame(id, { op: "system.health", target: "kernel://", args: {} }, { version: this.version }));
    await this.response(id);
  }

  /**
   * From now on answers each PING as it arrives with its PONG (taking it from `frames`), as a
   * live client does; returns how many it has answered so far (the same count at a second call).
   * A peer that waits on the kernel without sending keeps its session so, however slow the
   * machine: silent for three heartbeats (15 s by default) the kernel drops it as dead. Only for
   * a peer that sends whole frames: a PONG is written between two of the peer's writes.
   */
  answerPings(): () => number {
    if (this.pingsAnswered) return this.pingsAnswered;
    let answered = 0;
    // Added after the constructor's listener: this chunk's frames are decoded by then.
    this.sock.on("data", () => {
      for (let i = this.frames.length - 1; i >= 0; i--) {
        const f = this.frames[i];
        if (f?.msg.type === "PING") {
          this.frames.splice(i, 1);
          this.send(encodeMessage({ type: "PONG", body: { seq: f.msg.body.seq } }));
          answered++;
        }
      }
    });
    this.pingsAnswered = () => answered;
    return this.pingsAnswered;
  }

  /**
   * Stops reading (the socket paused) and stays alive: a PING every second until close. The kernel
   * drops a peer silent for 3 heartbeats (15 s by default) as dead — on a busy machine, mid-test,
   * which freed what it held as a bound would, or lost it what it was to read on resume.
   */
  stall(): void {
    this.sock.pause();
    let seq = 0;
    if (this.keepalive) return;
    this.keepalive = setInterval(() => this.sendMessage({ type: "PING", body: { seq: ++seq } }), 1000);
    this.sock.once("close", () => clearInterval(this.keepalive));
  }

  close(): void {
    clearInterval(this.keepalive);
    this.sock.destroy();
  }
}

/**
 * A kernel started with `opts` and an admin {@link RawPeer} on it: a raw-socket suite's `before`.
 * The peer answers PINGs: it lives the whole suite, quiet while tests that use other clients run.
 */
export async function rawPeerKernel(opts: KernelOptions = {}): Promise<{ t: TestKernel; p: RawPeer }> {
  const t = await startKernel(opts);
  const p = await RawPeer.admin(t);
  p.answerPings();
  return { t, p };
}

/** The peer closed, the kernel stopped and its home removed: a raw-socket suite's `after`. */
export async function stopRawPeerKernel(t: TestKernel | undefined, p: RawPeer | undefined): Promise<void> {
  p?.close();
  if (!t) return;
  await t.stop();
  removeHome(t.home);
}

/** Every audit record so far (queryAudit's default limit is 100). */
export function allAudit(k: Kernel): AuditRow[] {
  return k.inspect.queryAudit({ limit: 1_000_000 });
}

/** Waits until an audit record matching `pred` is committed, and returns it. */
export function auditRecord(k: Kernel, pred: (r: AuditRow) => boolean, what = "audit record"): Promise<AuditRow> {
  return until(() => allAudit(k).find(pred), 30_000, what);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One plaintext gRPC stream that sends 16 garbage bytes and waits for the kernel to end it. */
export function grpcGarbage(client: grpc.Client): Promise<void> {
  return new Promise((resolve) => {
    const call = client.makeBidiStreamRequest(
      "/kpip.v1.Kernel/Session",
      (b: Buffer) => b,
      (b: Buffer) => b,
    );
    call.on("data", () => {});
    call.on("error", () => resolve());
    call.on("end", () => resolve());
    call.write(Buffer.alloc(16, 0x41));
  });
}

/** The client connection preface of HTTP/2 (RFC 9113 §3.4), for raw peers of the gRPC listener. */
export const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** One HTTP/2 frame (RFC 9113 §4.1). */
export function h2Frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream, 5);
  return Buffer.concat([h, payload]);
}

/**
 * Calls `each` with every whole HTTP/2 frame `raw` receives, in order (a raw peer's reader):
 * its type, flags, stream id, payload, and the error code of an RST_STREAM or GOAWAY (0 otherwise).
 */
export function onH2Frames(
  raw: NodeJS.ReadableStream,
  each: (type: number, flags: number, stream: number, payload: Buffer, code: number) => void,
): void {
  let buf = Buffer.alloc(0);
  raw.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 9 && buf.length >= 9 + buf.readUIntBE(0, 3)) {
      const len = buf.readUIntBE(0, 3);
      const type = buf[3] as number;
      const payload = buf.subarray(9, 9 + len);
      // RST_STREAM (3): the code; GOAWAY (7): the last stream id, then the code.
      const code = type === 3 ? payload.readUInt32BE(0) : type === 7 ? payload.readUInt32BE(4) : 0;
      each(type, buf[4] as number, buf.readUInt32BE(5) & 0x7fffffff, payload, code);
      buf = buf.subarray(9 + len);
    }
  });
}
