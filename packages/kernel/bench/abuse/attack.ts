import net from "node:net";
import type { KernelClient } from "@kpip/client";
import {
  attestationTranscript,
  type CborValue,
  decodeMessage,
  encodeIntent,
  encodeMessage,
  FrameDecoder,
  HEADER_SIZE,
  type Identity,
  type Intent,
  type Limits,
  type Message,
  type Right,
  signBytes,
} from "@kpip/protocol";

/** What an attack gets: a live kernel in its own process and a way to make personas. */
export interface AttackContext {
  socket: string;
  home: string;
  /** The kernel's pid (attacks never signal it; the runner watches it). */
  pid: number;
  /** The admin, for setup and for checks the attack makes at its end. */
  admin: KernelClient;
  /** Registers a persona with a token of `rights` and connects it (reconnect off, one attempt). */
  persona(
    id: string,
    rights: Right[],
    limits?: Limits,
  ): Promise<{ identity: Identity; token: Uint8Array; connect(tokens?: Uint8Array[]): Promise<KernelClient> }>;
  /** Aborts when the attack's time is up: stop, release what you hold, return. */
  signal: AbortSignal;
}

/** What an attack reports: a line for the table and whether its own check held. */
export interface AttackResult {
  note: string;
  /** False when the attack's own check failed (e.g. a bound that did not hold). */
  ok: boolean;
}

/** One attack of issue #15: runs until `ctx.signal` aborts. */
export interface Attack {
  name: string;
  /** The finding of issue #15 it reproduces. */
  finding: number;
  summary: string;
  run(ctx: AttackContext): Promise<AttackResult>;
}

export const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });

/** Runs `f` with `n` workers until the signal aborts; returns how many calls settled each way. */
export async function hammer(
  signal: AbortSignal,
  n: number,
  f: (i: number) => Promise<unknown>,
): Promise<{ ok: number; failed: number; errors: Map<string, number> }> {
  const out = { ok: 0, failed: 0, errors: new Map<string, number>() };
  let i = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (!signal.aborted) {
        try {
          await f(i++);
          out.ok++;
        } catch (e) {
          out.failed++;
          const k = (e as { errorClass?: string }).errorClass ?? (e as Error).name;
          out.errors.set(k, (out.errors.get(k) ?? 0) + 1);
        }
      }
    }),
  );
  return out;
}

export const errorSummary = (m: Map<string, number>) => [...m].map(([k, v]) => `${k} ${v}`).join(", ") || "none";

/** A hand-driven connection: any bytes out, decoded frames in (or nothing, once it stops reading). */
export class RawConn {
  readonly frames: Message[] = [];
  closed = false;
  private readonly decoder = new FrameDecoder();

  private constructor(readonly sock: net.Socket) {
    sock.on("data", (d) => {
      try {
        for (const f of this.decoder.push(d)) this.frames.push(decodeMessage(f));
      } catch {
        // a hostile peer does not care about what comes back
      }
    });
    sock.on("close", () => {
      this.closed = true;
    });
    sock.on("error", () => {});
  }

  static open(path: string): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = net.connect(path);
      s.once("connect", () => resolve(new RawConn(s)));
      s.once("error", reject);
    });
  }

  send(m: Message | Uint8Array, stream = 0): void {
    if (!this.sock.writable) return;
    this.sock.write(m instanceof Uint8Array ? m : encodeMessage(m, stream));
  }

  async next<T extends Message["type"]>(type: T, ms = 5000): Promise<Extract<Message, { type: T }>> {
    const end = Date.now() + ms;
    for (;;) {
      const i = this.frames.findIndex((f) => f.type === type);
      if (i >= 0) return this.frames.splice(i, 1)[0] as Extract<Message, { type: T }>;
      if (this.closed || Date.now() > end) throw new Error(`no ${type} (closed: ${this.closed})`);
      await sleep(10);
    }
  }

  /** A full handshake as `identity`, binding `tokens`; resolves at WELCOME. */
  async handshake(identity: Identity, tokens: Uint8Array[]): Promise<void> {
    const hello = encodeMessage({
      type: "HELLO",
      body: {
        versions: [1],
        persona: identity.persona,
        publicKey: identity.publicKey,
        instance: Buffer.alloc(16, 5),
        features: [],
      },
    });
    this.send(hello);
    const ch = await this.next("CHALLENGE");
    const transcript = attestationTranscript(
      Buffer.from(hello.subarray(HEADER_SIZE)),
      Buffer.from(encodeMessage(ch).subarray(HEADER_SIZE)),
    );
    this.send({ type: "ATTEST", body: { signature: signBytes(identity.privateKey, transcript), tokens } });
    await this.next("WELCOME");
  }

  close(): void {
    this.sock.destroy();
  }
}

/** A REQUEST message as a raw peer sends it. */
export function request(
  id: number,
  persona: string,
  intent: Intent,
  caps: (number | Uint8Array)[],
): Extract<Message, { type: "REQUEST" }> {
  return {
    type: "REQUEST",
    body: { version: 1, persona, id, intent: encodeIntent(intent), context: { persona }, caps },
  };
}

export type { CborValue };
