import {
  type ArgsOf,
  agentKill,
  agentList,
  agentLogs,
  agentSpawn,
  agentStatus,
  type CborValue,
  computeSubmit,
  eventEmit,
  opCancel,
  opList,
  opResult,
  opStatusOp,
  personaList,
  personaRegister,
  personaRemove,
  type ResultOf,
  resourceAlloc,
  resourceFree,
  resourceQuery,
  storageDelete,
  storageList,
  storageRead,
  storageStat,
  type storageUploadCommit,
  storageWrite,
  systemDescribe,
  systemHealth,
  systemInfo,
  tokenInspect,
  tokenList,
  tokenMint,
  tokenRevoke,
} from "@kpip/protocol";
import { ProtocolViolationError, type UploadLostError } from "./errors.js";
import { type OpAnswer, type OpCall, opCall } from "./op-call.js";
import type { CallFn as Call, CallOptions } from "./options.js";
import { type PutLargeOptions, putLarge, type ReadLargeOptions, readStream } from "./storage-large.js";
import type { SubscribeOptions, Subscription } from "./subscription.js";

/*
 * Each family's methods are typed one-liners over the op catalogue (`@kpip/protocol`): the
 * arguments and payloads are the definitions' own types, so the client cannot drift from the
 * kernel or from the spec's Appendix C.
 */

/** system.* */
export class SystemApi {
  private readonly op: OpCall;
  constructor(call: Call) {
    this.op = opCall(call);
  }
  async health(opts?: CallOptions): Promise<ResultOf<typeof systemHealth>> {
    return (await this.op(systemHealth, "kernel://", {}, opts)).payload;
  }
  async info(opts?: CallOptions): Promise<ResultOf<typeof systemInfo>> {
    return (await this.op(systemInfo, "kernel://", {}, opts)).payload;
  }
  async describe(opts?: CallOptions): Promise<ResultOf<typeof systemDescribe>> {
    return (await this.op(systemDescribe, "kernel://", {}, opts)).payload;
  }
}

/** An object's bytes as storage.read answers them. */
export type StoredObject = Pick<ResultOf<typeof storageRead>, "data" | "generation" | "size">;

/** storage.* on obj://<workspace>/<path>. */
export class StorageApi {
  private readonly op: OpCall;
  /** `maxBody`: the largest frame body of the current session (chunks and ranges are cut to fit). */
  constructor(
    call: Call,
    private readonly maxBody: () => number = () => 16 * 1024 * 1024,
    /** Sessions the client has made: a putLarge across a reconnect tells a restarted kernel's lost upload by it. */
    private readonly connections: () => number = () => 0,
  ) {
    this.op = opCall(call);
  }
  /**
   * Writes bytes (or UTF-8 text). `ifGeneration`: 0 = only if absent, n = only if at generation n.
   * Bytes of 64 KiB or more are sent from `data` itself, not a copy: do not change them until the
   * promise settles (a retry or a resend after a reconnect sends them again). After it settled
   * they may change: a write aborted or past its local deadline rejects only once the socket has
   * let go of them (see {@link KernelClient.call}), so the kernel gets the original bytes or none.
   */
  async write(
    target: string,
    data: Uint8Array | string,
    opts: CallOptions & { ifGeneration?: number } = {},
  ): Promise<ResultOf<typeof storageWrite>> {
    const { ifGeneration, ...rest } = opts;
    return (await this.op(storageWrite, target, { data, ifGeneration }, rest)).payload;
  }
  /** Reads a whole object (it must fit one frame; see {@link getLarge} and {@link readStream} for larger ones). */
  async read(target: string, opts?: CallOptions): Promise<ResultOf<typeof storageRead>> {
    return (await this.op(storageRead, target, {}, opts)).payload;
  }
  /** Reads `length` bytes from `offset` (clipped to the end); `size` is the whole object's. */
  async readRange(
    target: string,
    offset: number,
    length: number,
    opts: CallOptions & { ifGeneration?: number } = {},
  ): Promise<ResultOf<typeof storageRead>> {
    const { ifGeneration, ...rest } = opts;
    return (await this.op(storageRead, target, { offset, length, ifGeneration }, rest)).payload;
  }
  /**
   * Writes an object of any size through the chunked upload: `source` is a buffer or an
   * (async) iterable of byte arrays (then `opts.size` is required). The client hashes the bytes
   * as it sends them; the commit names that SHA-256 and the kernel refuses it unless the bytes
   * it received match. Memory: about `window` chunks on each side. The bytes are sent from the
   * source's own buffers, not copied: an iterable must yield a buffer it does not change or
   * reuse afterwards (as streams do), and a buffer source must not change until this settles.
   * It settles (an abort or a deadline included) only after every chunk's call has, each once
   * the socket has let go of its bytes: from then on the source may change. An upload the
   * kernel lost to a restart while the client reconnected is begun again from a buffer source
   * (at most three more times); from an iterable one, already consumed, it is {@link UploadLostError}.
   *
   * @example
   * await client.storage.putLarge("obj://ws/video.bin", createReadStream(file), { size: statSync(file).size });
   */
  putLarge(
    target: string,
    source: Uint8Array | AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    opts?: PutLargeOptions,
  ): Promise<ResultOf<typeof storageUploadCommit>> {
    return putLarge(this.op, this.maxBody(), target, source, opts, this.connections);
  }
  /** An object's bytes as ranged reads, one generation throughout (a concurrent write fails the stream). */
  readStream(target: string, opts?: ReadLargeOptions): AsyncIterable<Uint8Array> {
    return readStream(this.op, this.maxBody(), target, opts);
  }
  /** A whole object of any size, gathered from {@link readStream} into one buffer. */
  async getLarge(target: string, opts?: ReadLargeOptions): Promise<Buffer> {
    const parts: Uint8Array[] = [];
    for await (const p of this.readStream(target, opts)) parts.push(p);
    return Buffer.concat(parts);
  }
  async stat(target: string, opts?: CallOptions): Promise<ResultOf<typeof storageStat>> {
    return (await this.op(storageStat, target, {}, opts)).payload;
  }
  async delete(target: string, opts: CallOptions & { ifGeneration?: number } = {}): Promise<ResultOf<typeof storageDelete>> {
    const { ifGeneration, ...rest } = opts;
    return (await this.op(storageDelete, target, { ifGeneration }, rest)).payload;
  }
  /** Every entry under obj://ws[/prefix], following PARTIAL pages and their cursors. */
  async *list(
    target: string,
    opts: CallOptions & { pageSize?: number } = {},
  ): AsyncIterable<ResultOf<typeof storageList>["items"][number]> {
    const { pageSize, ...rest } = opts;
    yield* pages(
      (cursor) => this.op(storageList, target, { limit: pageSize, cursor }, rest),
      (p) => p.items,
    );
  }
}

/** token.* */
export class TokensApi {
  private readonly op: OpCall;
  constructor(call: Call) {
    this.op = opCall(call);
  }
  async mint(persona: string, spec: ArgsOf<typeof tokenMint>, opts?: CallOptions): Promise<ResultOf<typeof tokenMint>> {
    return (await this.op(tokenMint, `persona://${persona}`, spec, opts)).payload;
  }
  async revoke(id: string, opts?: CallOptions): Promise<void> {
    await this.op(tokenRevoke, `token://${id}`, {}, opts);
  }
  async inspect(id: string, token: Uint8Array, opts?: CallOptions): Promise<ResultOf<typeof tokenInspect>> {
    return (await this.op(tokenInspect, `token://${id}`, { token }, opts)).payload;
  }
  /** Every token the caller may see (optionally only `persona`'s), following PARTIAL pages and their cursors. */
  async *list(opts: CallOptions & { persona?: string; pageSize?: number } = {}): AsyncIterable<TokenEntry> {
    const { persona, pageSize, ...rest } = opts;
    yield* pages(
      (cursor) => this.op(tokenList, "kernel://", { persona, limit: pageSize, cursor }, rest),
      (p) => p.tokens,
    );
  }
}

/** One row of token.list. */
export type TokenEntry = ResultOf<typeof tokenList>["tokens"][number];

/** event.* — `subscribe` returns an async iterable that survives reconnects. */
export class EventsApi {
  private readonly op: OpCall;
  constructor(
    call: Call,
    private readonly subscribeFn: (pattern: string, opts?: SubscribeOptions) => Promise<Subscription>,
  ) {
    this.op = opCall(call);
  }
  subscribe(pattern: string, opts?: SubscribeOptions): Promise<Subscription> {
    return this.subscribeFn(pattern, opts);
  }
  async emit(topic: string, data?: CborValue, opts?: CallOptions): Promise<ResultOf<typeof eventEmit>> {
    return (await this.op(eventEmit, topic, { data }, opts)).payload;
  }
}

/** A DEFERRED answer: the op to follow. */
export type Deferred = ResultOf<typeof computeSubmit>;

/** compute.* — submit answers DEFERRED; follow it with `client.ops`. */
export class ComputeApi {
  private readonly op: OpCall;
  constructor(call: Call) {
    this.op = opCall(call);
  }
  /** Runs an allowed command (no shell) as a DEFERRED op. */
  async command(executable: string, args: string[] = [], opts: CallOptions & { timeoutMs?: number } = {}): Promise<Deferred> {
    const { timeoutMs, ...rest } = opts;
    return (await this.op(computeSubmit, `op://command/${executable}`, { args, timeoutMs }, rest)).payload;
  }
  /** Runs an embedder-registered task function as a DEFERRED op. */
  async task(name: string, input: CborValue = null, opts: CallOptions & { timeoutMs?: number } = {}): Promise<Deferred> {
    const { timeoutMs, ...rest } = opts;
    return (await this.op(computeSubmit, `op://task/${name}`, { args: input, timeoutMs }, rest)).payload;
  }
}

/** op.* — follow-up on DEFERRED ops (no implicit continuation: the persona asks). */
export class OpsApi {
  private readonly op: OpCall;
  constructor(call: Call) {
    this.op = opCall(call);
  }
  async status(op: string | Deferred, opts?: CallOptions): Promise<ResultOf<typeof opStatusOp>> {
    return (await this.op(opStatusOp, typeof op === "string" ? op : op.op, {}, opts)).payload;
  }
  /**
   * The op's result if finished, or undefined while it runs. A failed or cancelled op throws its
   * error, a KpipError whose `payload` is its status with `result` (a command's exit code, signal
   * and captured output, when it ran).
   */
  async result(op: string | Deferred, opts?: CallOptions): Promise<CborValue | undefined> {
    const r = await this.op(opResult, typeof op === "string" ? op : op.op, {}, opts);
    return r.status === "DEFERRED" ? undefined : r.payload.result;
  }
  async cancel(op: string | Deferred, opts?: CallOptions): Promise<boolean> {
    return (await this.op(opCancel, typeof op === "string" ? op : op.op, {}, opts)).payload.cancelled;
  }
  /** The caller's ops (every persona's, for the admin), newest first, following PARTIAL pages and their cursors. */
  async list(opts: CallOptions & { pageSize?: number } = {}): Promise<ResultOf<typeof opList>["ops"]> {
    const { pageSize, ...rest } = opts;
    return allPages(
      (cursor) => this.op(opList, "kernel://", { limit: pageSize, cursor }, rest),
      (p) => p.ops,
    );
  }
  /**
   * Follows a DEFERRED op to its result, asking op.result with growing pauses (25 ms up to
   * `pollMaxMs`: 1 s by default, at most 10 s). The kernel keeps a finished op's result that no
   * op.result has handed out yet for its grace (`opResultGraceMs`, 60 s by default), however many
   * other ops the persona's tree finishes meanwhile, so a poller this frequent always finds it.
   * Aborting `signal` (also during a poll) sends op.cancel and rejects with the abort reason.
   */
  async wait(op: string | Deferred, opts: { signal?: AbortSignal; pollMaxMs?: number } = {}): Promise<CborValue | undefined> {
    const uri = typeof op === "string" ? op : op.op;
    const signal = opts.signal;
    const most = Math.min(opts.pollMaxMs ?? 1000, MAX_POLL_MS);
    let pause = 25;
    for (;;) {
      if (signal?.aborted) {
        await this.cancel(uri).catch(() => {});
        throw signal.reason ?? new Error("aborted");
      }
      let r: OpAnswer<typeof opResult>;
      try {
        r = await this.op(opResult, uri, {}, signal ? { signal } : undefined);
      } catch (e) {
        if (signal?.aborted) continue; // cancelled above, then the abort's reason
        throw e;
      }
      if (r.status !== "DEFERRED") return r.payload.result;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          signal?.removeEventListener("abort", done);
          resolve();
        };
        const t = setTimeout(done, pause);
        signal?.addEventListener("abort", done, { once: true });
      });
      pause = Math.min(pause * 2, most);
    }
  }
}

/**
 * The longest pause between two polls of ops.wait: well inside the kernel's grace for an unread
 * result (opResultGraceMs, 60 s by default), so a result is never forgotten before it is read.
 */
const MAX_POLL_MS = 10_000;

/** resource.* — reservations against the token's limits, and usage. */
export class ResourcesApi {
  private readonly op: OpCall;
  constructor(call: Call) {
    this.op = opCall(call);
  }
  async alloc(persona: string, resource: string, amount: number, opts?: CallOptions): Promise<ResultOf<typeof resourceAlloc>> {
    return (await this.op(resourceAlloc, `persona://${persona}`, { resource, amount }, opts)).payload;
  }
  async free(persona: string, allocation: string, opts?: CallOptions): Promise<void> {
    await this.op(resourceFree, `persona://${persona}`, { allocation }, opts);
  }
  async query(target: string, opts?: CallOptions): Promise<ResultOf<typeof resourceQuery>> {
    return (await this.op(resourceQuery, target, {}, opts)).payload;
  }
}

/** A call on one agent: `spawner` (the admin only) names another persona's agent of that name. */
export type AgentCallOptions = CallOptions & { spawner?: string };

const spawnerArgs = (spawner: string | undefined) => (spawner === undefined ? {} : { spawner });

/** agent.* — agents are processes the kernel starts; each connects back as its own persona. */
export class AgentsApi {
  private readonly op: OpCall;
  constructor(call: Call) {
    this.op = opCall(call);
  }
  /** Starts agent://<executable>/<instance> with a token of `rights` (within the caller's grant). */
  async spawn(
    executable: string,
    instance: string,
    spec: ArgsOf<typeof agentSpawn>,
    opts?: CallOptions,
  ): Promise<ResultOf<typeof agentSpawn>> {
    return (await this.op(agentSpawn, `agent://${executable}/${instance}`, spec, opts)).payload;
  }
  /**
   * Kills an agent; whether this call killed it (false when it had ended or was already being killed). agent://<executable>/<instance> names the caller's
   * own: every spawner has its own names, so the admin names another persona's with `spawner`.
   */
  async kill(agent: string, opts: AgentCallOptions = {}): Promise<boolean> {
    const { spawner, ...rest } = opts;
    return (await this.op(agentKill, agent, spawnerArgs(spawner), rest)).payload.killed;
  }
  async status(agent: string, opts: AgentCallOptions = {}): Promise<ResultOf<typeof agentStatus>> {
    const { spawner, ...rest } = opts;
    return (await this.op(agentStatus, agent, spawnerArgs(spawner), rest)).payload;
  }
  async logs(agent: string, opts: AgentCallOptions = {}): Promise<ResultOf<typeof agentLogs>> {
    const { spawner, ...rest } = opts;
    return (await this.op(agentLogs, agent, spawnerArgs(spawner), rest)).payload;
  }
  /** Every agent the caller may see, following PARTIAL pages and their cursors. */
  async list(opts: CallOptions & { pageSize?: number } = {}): Promise<ResultOf<typeof agentList>["agents"]> {
    const { pageSize, ...rest } = opts;
    return allPages(
      (cursor) => this.op(agentList, "kernel://", { limit: pageSize, cursor }, rest),
      (p) => p.agents,
    );
  }
}

/** One entry of the persona registry: its id, raw Ed25519 public key, and registration time. */
export type PersonaEntry = ResultOf<typeof personaRegister>;

/**
 * persona.* — the persona registry through the kernel (capability-checked and audited).
 * Needs a grant over the op and `persona://<id>`, e.g. `persona.*` on `persona://alice/**` to
 * manage alice's sub-personas.
 */
export class PersonasApi {
  private readonly op: OpCall;
  constructor(call: Call) {
    this.op = opCall(call);
  }
  /** Registers `persona` with its raw Ed25519 public key; it can attest at once. */
  async register(persona: string, publicKey: Uint8Array, opts?: CallOptions): Promise<PersonaEntry> {
    return (await this.op(personaRegister, `persona://${persona}`, { publicKey }, opts)).payload;
  }
  /**
   * Removes `persona`: its open sessions end at once (AUTH/PERSONA_REMOVED) and the tokens
   * issued to it are revoked.
   */
  async remove(persona: string, opts?: CallOptions): Promise<ResultOf<typeof personaRemove>> {
    return (await this.op(personaRemove, `persona://${persona}`, {}, opts)).payload;
  }
  /** `persona` and its registered sub-personas, in id order, following PARTIAL pages and their cursors. */
  async list(persona: string, opts: CallOptions & { pageSize?: number } = {}): Promise<PersonaEntry[]> {
    const { pageSize, ...rest } = opts;
    return allPages(
      (cursor) => this.op(personaList, `persona://${persona}`, { limit: pageSize, cursor }, rest),
      (p) => p.personas,
    );
  }
}

/**
 * Every row of a paged listing (PROTOCOL §9.3), page by page: asks for the next page with the
 * cursor of each PARTIAL one. A PARTIAL page must move on: one with no rows, or whose cursor was
 * given before, is a {@link ProtocolViolationError} (a faulty kernel's answers would otherwise be
 * followed for ever).
 */
async function* pages<P extends { cursor?: string }, R>(
  page: (cursor: string | undefined) => Promise<{ status: string; payload: P }>,
  rows: (payload: P) => R[],
): AsyncGenerator<R, void, undefined> {
  let cursor: string | undefined;
  const seen = new Set<string>();
  for (;;) {
    const r = await page(cursor);
    const got = rows(r.payload);
    // Checked before use: a string's characters would be handed out as rows, and a cursor that is
    // no text would be sent back and kept (a faulty kernel's answer, as case 458's fields).
    if (!Array.isArray(got)) throw new ProtocolViolationError("the kernel answered a listing page whose rows are not an array");
    yield* got;
    if (r.status !== "PARTIAL" || r.payload.cursor === undefined) return;
    if (typeof r.payload.cursor !== "string")
      throw new ProtocolViolationError("the kernel answered a listing page whose cursor is not a text string");
    cursor = r.payload.cursor;
    if (got.length === 0 || seen.has(cursor))
      throw new ProtocolViolationError(
        got.length === 0
          ? "the kernel answered PARTIAL with no rows: a listing page must move on"
          : `the kernel gave the cursor ${JSON.stringify(cursor.slice(0, 64))} twice: the listing would never end`,
      );
    seen.add(cursor);
  }
}

/** Every row of a paged listing, gathered into one array. */
async function allPages<P extends { cursor?: string }, R>(
  page: (cursor: string | undefined) => Promise<{ status: string; payload: P }>,
  rows: (payload: P) => R[],
): Promise<R[]> {
  const all: R[] = [];
  for await (const row of pages(page, rows)) all.push(row);
  return all;
}
