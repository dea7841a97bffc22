import type { CborMap, CborValue } from "@kpip/protocol";
import type { CallFn as Call, CallOptions, CallResult } from "./options.js";
import { type PutLargeOptions, putLarge, type ReadLargeOptions, readStream } from "./storage-large.js";
import type { Subscription } from "./subscription.js";

/** system.* */
export class SystemApi {
  constructor(private readonly call: Call) {}
  health(opts?: CallOptions): Promise<{ status: string; uptimeMs: number }> {
    return this.call("system.health", "kernel://", {}, opts).then((r) => r.payload as { status: string; uptimeMs: number });
  }
  info(opts?: CallOptions): Promise<CborMap> {
    return this.call("system.info", "kernel://", {}, opts).then((r) => r.payload as CborMap);
  }
  describe(opts?: CallOptions): Promise<{ ops: { op: string; description: string; targets: string[] }[] }> {
    return this.call("system.describe", "kernel://", {}, opts).then((r) => r.payload as never);
  }
}

export interface StoredObject {
  data: Uint8Array;
  generation: number;
  size: number;
}

/** storage.* on obj://<workspace>/<path>. */
export class StorageApi {
  /** `maxBody`: the largest frame body of the current session (chunks and ranges are cut to fit). */
  constructor(
    private readonly call: Call,
    private readonly maxBody: () => number = () => 16 * 1024 * 1024,
  ) {}
  /** Writes bytes (or UTF-8 text). `ifGeneration`: 0 = only if absent, n = only if at generation n. */
  async write(
    target: string,
    data: Uint8Array | string,
    opts: CallOptions & { ifGeneration?: number } = {},
  ): Promise<{ generation: number; size: number }> {
    const { ifGeneration, ...rest } = opts;
    const args: CborMap = { data };
    if (ifGeneration !== undefined) args.ifGeneration = ifGeneration;
    return (await this.call("storage.write", target, args, rest)).payload as { generation: number; size: number };
  }
  /** Reads a whole object (it must fit one frame; see {@link getLarge} and {@link readStream} for larger ones). */
  async read(target: string, opts?: CallOptions): Promise<StoredObject> {
    return (await this.call("storage.read", target, {}, opts)).payload as unknown as StoredObject;
  }
  /** Reads `length` bytes from `offset` (clipped to the end); `size` is the whole object's. */
  async readRange(
    target: string,
    offset: number,
    length: number,
    opts: CallOptions & { ifGeneration?: number } = {},
  ): Promise<StoredObject & { offset: number }> {
    const { ifGeneration, ...rest } = opts;
    const args: CborMap = { offset, length };
    if (ifGeneration !== undefined) args.ifGeneration = ifGeneration;
    return (await this.call("storage.read", target, args, rest)).payload as never;
  }
  /**
   * Writes an object of any size through the chunked upload: `source` is a buffer or an
   * (async) iterable of byte arrays (then `opts.size` is required). The client hashes the bytes
   * as it sends them; the commit names that SHA-256 and the kernel refuses it unless the bytes
   * it received match. Memory: about `window` chunks on each side.
   *
   * @example
   * await client.storage.putLarge("obj://ws/video.bin", createReadStream(file), { size: statSync(file).size });
   */
  putLarge(
    target: string,
    source: Uint8Array | AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    opts?: PutLargeOptions,
  ): Promise<{ generation: number; size: number; sha256: Uint8Array }> {
    return putLarge(this.call, this.maxBody(), target, source, opts);
  }
  /** An object's bytes as ranged reads, one generation throughout (a concurrent write fails the stream). */
  readStream(target: string, opts?: ReadLargeOptions): AsyncIterable<Uint8Array> {
    return readStream(this.call, this.maxBody(), target, opts);
  }
  /** A whole object of any size, gathered from {@link readStream} into one buffer. */
  async getLarge(target: string, opts?: ReadLargeOptions): Promise<Buffer> {
    const parts: Uint8Array[] = [];
    for await (const p of this.readStream(target, opts)) parts.push(p);
    return Buffer.concat(parts);
  }
  async stat(target: string, opts?: CallOptions): Promise<{ generation: number; size: number; updatedAt: number }> {
    return (await this.call("storage.stat", target, {}, opts)).payload as never;
  }
  async delete(target: string, opts: CallOptions & { ifGeneration?: number } = {}): Promise<{ generation: number }> {
    const { ifGeneration, ...rest } = opts;
    return (await this.call("storage.delete", target, ifGeneration === undefined ? {} : { ifGeneration }, rest)).payload as never;
  }
  /** Every entry under obj://ws[/prefix], following PARTIAL pages and their cursors. */
  async *list(
    target: string,
    opts: CallOptions & { pageSize?: number } = {},
  ): AsyncIterable<{ path: string; size: number; generation: number }> {
    const { pageSize, ...rest } = opts;
    let cursor: string | undefined;
    for (;;) {
      const args: CborMap = {};
      if (pageSize !== undefined) args.limit = pageSize;
      if (cursor !== undefined) args.cursor = cursor;
      const r: CallResult = await this.call("storage.list", target, args, rest);
      const p = r.payload as { items: { path: string; size: number; generation: number }[]; cursor?: string };
      yield* p.items;
      if (r.status !== "PARTIAL" || p.cursor === undefined) return;
      cursor = p.cursor;
    }
  }
}

/** token.* */
export class TokensApi {
  constructor(private readonly call: Call) {}
  async mint(
    persona: string,
    spec: {
      rights: { ops: string[]; targets: string[] }[];
      ttlMs: number;
      maxLifetimeMs?: number;
      limits?: Record<string, number>;
      workspaces?: string[];
      domains?: string[];
    },
    opts?: CallOptions,
  ): Promise<{ token: Uint8Array; id: string; exp: number }> {
    return (await this.call("token.mint", `persona://${persona}`, spec as unknown as CborMap, opts)).payload as never;
  }
  async revoke(id: string, opts?: CallOptions): Promise<void> {
    await this.call("token.revoke", `token://${id}`, {}, opts);
  }
  async inspect(id: string, token: Uint8Array, opts?: CallOptions): Promise<CborValue | undefined> {
    return (await this.call("token.inspect", `token://${id}`, { token }, opts)).payload;
  }
  /** Every token the caller may see (optionally only `persona`'s), following PARTIAL pages and their cursors. */
  async *list(opts: CallOptions & { persona?: string; pageSize?: number } = {}): AsyncIterable<TokenEntry> {
    const { persona, pageSize, ...rest } = opts;
    let cursor: string | undefined;
    for (;;) {
      const args: CborMap = {};
      if (persona !== undefined) args.persona = persona;
      if (pageSize !== undefined) args.limit = pageSize;
      if (cursor !== undefined) args.cursor = cursor;
      const r: CallResult = await this.call("token.list", "kernel://", args, rest);
      const p = r.payload as unknown as { tokens: TokenEntry[]; cursor?: string };
      yield* p.tokens;
      if (r.status !== "PARTIAL" || p.cursor === undefined) return;
      cursor = p.cursor;
    }
  }
}

/** One row of token.list. */
export interface TokenEntry {
  id: string;
  sub: string;
  chain: string[];
  exp: number;
  mintedBy: string;
  createdAt: number;
  revokedAt?: number;
}

/** event.* — `subscribe` returns an async iterable that survives reconnects. */
export class EventsApi {
  constructor(
    private readonly call: Call,
    private readonly subscribeFn: (pattern: string, opts?: CallOptions & { bufferSize?: number }) => Promise<Subscription>,
  ) {}
  subscribe(pattern: string, opts?: CallOptions & { bufferSize?: number }): Promise<Subscription> {
    return this.subscribeFn(pattern, opts);
  }
  async emit(topic: string, data?: CborValue, opts?: CallOptions): Promise<{ subscribers: number }> {
    return (await this.call("event.emit", topic, data === undefined ? {} : { data }, opts)).payload as never;
  }
}

/** A DEFERRED answer: the op to follow. */
export interface Deferred {
  op: string;
  id: string;
}

/** compute.* — submit answers DEFERRED; follow it with `client.ops`. */
export class ComputeApi {
  constructor(private readonly call: Call) {}
  /** Runs an allowed command (no shell) as a DEFERRED op. */
  async command(executable: string, args: string[] = [], opts: CallOptions & { timeoutMs?: number } = {}): Promise<Deferred> {
    const { timeoutMs, ...rest } = opts;
    const a: CborMap = { args };
    if (timeoutMs !== undefined) a.timeoutMs = timeoutMs;
    return (await this.call("compute.submit", `op://command/${executable}`, a, rest)).payload as unknown as Deferred;
  }
  /** Runs an embedder-registered task function as a DEFERRED op. */
  async task(name: string, input: CborValue = null, opts: CallOptions & { timeoutMs?: number } = {}): Promise<Deferred> {
    const { timeoutMs, ...rest } = opts;
    const a: CborMap = { args: input };
    if (timeoutMs !== undefined) a.timeoutMs = timeoutMs;
    return (await this.call("compute.submit", `op://task/${name}`, a, rest)).payload as unknown as Deferred;
  }
}

/** op.* — follow-up on DEFERRED ops (no implicit continuation: the persona asks). */
export class OpsApi {
  constructor(private readonly call: Call) {}
  async status(op: string | Deferred, opts?: CallOptions): Promise<CborMap> {
    return (await this.call("op.status", typeof op === "string" ? op : op.op, {}, opts)).payload as CborMap;
  }
  /** The op's result if finished (FAILURE throws the op's error), or undefined while it runs. */
  async result(op: string | Deferred, opts?: CallOptions): Promise<CborValue | undefined> {
    const r = await this.call("op.result", typeof op === "string" ? op : op.op, {}, opts);
    return r.status === "DEFERRED" ? undefined : (r.payload as CborMap).result;
  }
  async cancel(op: string | Deferred, opts?: CallOptions): Promise<boolean> {
    return ((await this.call("op.cancel", typeof op === "string" ? op : op.op, {}, opts)).payload as { cancelled: boolean })
      .cancelled;
  }
  /**
   * Follows a DEFERRED op to its result, asking op.result with growing pauses (25 ms → 1 s).
   * Aborting `signal` sends op.cancel and rejects with the abort reason.
   */
  async wait(op: string | Deferred, opts: { signal?: AbortSignal; pollMaxMs?: number } = {}): Promise<CborValue | undefined> {
    const uri = typeof op === "string" ? op : op.op;
    let pause = 25;
    for (;;) {
      if (opts.signal?.aborted) {
        await this.cancel(uri).catch(() => {});
        throw opts.signal.reason ?? new Error("aborted");
      }
      const r = await this.call("op.result", uri, {});
      if (r.status !== "DEFERRED") return (r.payload as CborMap).result;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, pause);
        opts.signal?.addEventListener(
          "abort",
          () => {
            clearTimeout(t);
            resolve();
          },
          { once: true },
        );
      });
      pause = Math.min(pause * 2, opts.pollMaxMs ?? 1000);
    }
  }
}

/** resource.* — reservations against the token's limits, and usage. */
export class ResourcesApi {
  constructor(private readonly call: Call) {}
  async alloc(
    persona: string,
    resource: string,
    amount: number,
    opts?: CallOptions,
  ): Promise<{ allocation: string; resource: string; amount: number }> {
    return (await this.call("resource.alloc", `persona://${persona}`, { resource, amount }, opts)).payload as never;
  }
  async free(persona: string, allocation: string, opts?: CallOptions): Promise<void> {
    await this.call("resource.free", `persona://${persona}`, { allocation }, opts);
  }
  async query(target: string, opts?: CallOptions): Promise<CborMap> {
    return (await this.call("resource.query", target, {}, opts)).payload as CborMap;
  }
}

/** agent.* — agents are processes the kernel starts; each connects back as its own persona. */
export class AgentsApi {
  constructor(private readonly call: Call) {}
  /** Starts agent://<executable>/<instance> with a token of `rights` (within the caller's grant). */
  async spawn(
    executable: string,
    instance: string,
    spec: {
      args?: string[];
      rights: { ops: string[]; targets: string[] }[];
      lifetimeMs: number;
      limits?: Record<string, number>;
    },
    opts?: CallOptions,
  ): Promise<CborMap> {
    return (await this.call("agent.spawn", `agent://${executable}/${instance}`, spec as unknown as CborMap, opts))
      .payload as CborMap;
  }
  async kill(agent: string, opts?: CallOptions): Promise<void> {
    await this.call("agent.kill", agent, {}, opts);
  }
  async status(agent: string, opts?: CallOptions): Promise<CborMap> {
    return (await this.call("agent.status", agent, {}, opts)).payload as CborMap;
  }
  async logs(agent: string, opts?: CallOptions): Promise<{ stdout: Uint8Array; stderr: Uint8Array }> {
    return (await this.call("agent.logs", agent, {}, opts)).payload as never;
  }
  async list(opts?: CallOptions): Promise<CborMap[]> {
    return ((await this.call("agent.list", "kernel://", {}, opts)).payload as { agents: CborMap[] }).agents;
  }
}

/** One entry of the persona registry. */
export interface PersonaEntry {
  persona: string;
  /** Raw Ed25519 public key (32 bytes). */
  publicKey: Uint8Array;
  /** Registration time, ms since the epoch. */
  created: number;
}

/**
 * persona.* — the persona registry through the kernel (capability-checked and audited).
 * Needs a grant over the op and `persona://<id>`, e.g. `persona.*` on `persona://alice/**` to
 * manage alice's sub-personas.
 */
export class PersonasApi {
  constructor(private readonly call: Call) {}
  /** Registers `persona` with its raw Ed25519 public key; it can attest at once. */
  async register(persona: string, publicKey: Uint8Array, opts?: CallOptions): Promise<PersonaEntry> {
    return (await this.call("persona.register", `persona://${persona}`, { publicKey }, opts)).payload as unknown as PersonaEntry;
  }
  /**
   * Removes `persona`: its open sessions end at once (AUTH/PERSONA_REMOVED) and the tokens
   * issued to it are revoked.
   */
  async remove(persona: string, opts?: CallOptions): Promise<{ removed: string; sessionsEnded: number; tokensRevoked: number }> {
    return (await this.call("persona.remove", `persona://${persona}`, {}, opts)).payload as never;
  }
  /** `persona` and its registered sub-personas. */
  async list(persona: string, opts?: CallOptions): Promise<PersonaEntry[]> {
    return (
      (await this.call("persona.list", `persona://${persona}`, {}, opts)).payload as unknown as { personas: PersonaEntry[] }
    ).personas;
  }
}
