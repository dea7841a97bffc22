import { Worker } from "node:worker_threads";
import { createLogger, type Logger } from "../log.js";
import { type HashAsk, RangeHashes, type HashReply as Reply } from "./upload-range-hashes.js";

/** How often the hash worker is restarted before hashing stays on the kernel's thread. */
export interface HasherRestarts {
  /** Deaths within `windowMs` after which the worker is no longer restarted. */
  max: number;
  windowMs: number;
  /** The wait before the second restart within the window, doubling after each (the first is at once). */
  backoffMs: number;
  maxBackoffMs: number;
}

const RESTARTS: HasherRestarts = { max: 5, windowMs: 60_000, backoffMs: 100, maxBackoffMs: 5_000 };

/** What the main thread knows of a key's hash in the worker: the end of its acknowledged ranges. */
interface KeyState {
  fd: number;
  acked: number;
}

interface Waiting {
  m: HashAsk;
  /** The key's state when asked (a range's or digest's); detached once the key is forgotten or failed. */
  state: KeyState | undefined;
  resolve(r: Reply): void;
  reject(e: Error): void;
}

const ignore = () => {};

/**
 * Hashes uploads off the kernel's thread: the object's SHA-256 is the one pass over a chunk the
 * kernel's thread no longer makes (the other is the intent hash, which the pipeline needs before
 * anything runs). One worker, started at the first upload, unref'd; it reads the partial files
 * through the descriptors the kernel holds (a worker shares them), which the caller keeps open
 * until the key is digested or forgotten.
 *
 * A worker that dies takes its hashes with it, but not the bytes: its failure is logged and a
 * new worker is started (at once, then after a doubling wait), which hashes each upload again
 * from its partial file up to the ranges the dead one acknowledged, then is sent every range and
 * digest that was not answered, in order. Every digest still covers exactly the bytes received
 * (a replay that cannot read them fails the upload). After `restarts.max` deaths within
 * `restarts.windowMs`, hashing stays on the kernel's thread, with the same replay.
 */
export class UploadHasher {
  private worker: Worker | undefined;
  private inline: RangeHashes | undefined;
  private readonly waiting = new Map<number, Waiting>();
  /** Keys with a hash in the worker, as its acknowledged replies left them. */
  private readonly keys = new Map<string, KeyState>();
  private seq = 0;
  private closed = false;
  private deaths: number[] = [];
  private restartTimer: NodeJS.Timeout | undefined;
  private readonly module: URL;
  private readonly log: Logger;
  private readonly restarts: HasherRestarts;
  /** Workers started so far (the first one included). */
  started = 0;

  constructor(opts: { module?: URL | undefined; log?: Logger; restarts?: Partial<HasherRestarts> } = {}) {
    this.module = opts.module ?? new URL("./upload-hash-worker.js", import.meta.url);
    this.log = opts.log ?? createLogger("silent");
    this.restarts = { ...RESTARTS, ...opts.restarts };
  }

  /** Resolves once the range is hashed. */
  async range(key: string, fd: number, offset: number, length: number): Promise<void> {
    await this.ask({ kind: "range", seq: 0, key, fd, offset, length });
  }

  /** The SHA-256 of `key`'s ranges, once every range it was given resolved; they must cover [0, length). */
  async digest(key: string, length: number): Promise<Buffer> {
    const r = await this.ask({ kind: "digest", seq: 0, key, length });
    return Buffer.from(r.digest as Uint8Array);
  }

  /** Forgets `key` (its descriptor may be closed from now on: a restart does not read it again). */
  forget(key: string): void {
    if (this.inline) {
      this.inline.forget(key);
      return;
    }
    this.keys.delete(key);
    this.worker?.postMessage({ kind: "forget", seq: 0, key });
  }

  /** Ends the worker (the kernel stops): what it was hashing fails. */
  close(): void {
    this.closed = true;
    clearTimeout(this.restartTimer);
    const w = this.worker;
    this.worker = undefined;
    for (const p of this.waiting.values()) p.reject(new Error("the kernel is stopping"));
    this.waiting.clear();
    void w?.terminate();
  }

  private ask(m: HashAsk): Promise<Reply> {
    if (this.closed) return Promise.reject(new Error("the kernel is stopping"));
    if (this.inline) return settle(this.inline.answer(m));
    let state = this.keys.get(m.key);
    if (m.kind === "range" && state === undefined) {
      state = { fd: m.fd as number, acked: 0 };
      this.keys.set(m.key, state);
    }
    return new Promise<Reply>((resolve, reject) => {
      const entry: Waiting = { m, state, resolve, reject };
      if (this.worker) this.post(this.worker, entry);
      else if (this.restartTimer) {
        // Waits for the restart, which sends it; the wait keeps the process alive meanwhile.
        this.waiting.set(++this.seq, entry);
        this.restartTimer.ref();
      } else {
        this.waiting.set(++this.seq, entry);
        this.start();
      }
    });
  }

  /** Sends `entry` to `w` under a new sequence number (the order of sending is the order of hashing). */
  private post(w: Worker, entry: Waiting): void {
    const seq = ++this.seq;
    this.waiting.set(seq, entry);
    // Kept alive while something waits on it (its reply, or its exit if it dies), unref'd when idle.
    if (this.waiting.size === 1) w.ref();
    w.postMessage({ ...entry.m, seq });
  }

  /** A reply: the key's state follows what the worker did, then the asker is answered. */
  private settled(entry: Waiting, r: Reply): void {
    const { m, state } = entry;
    if (m.kind === "range" && r.error === undefined && state) state.acked = (m.offset as number) + (m.length as number);
    else if (this.keys.get(m.key) === state) this.keys.delete(m.key);
    if (r.error !== undefined) entry.reject(new Error(r.error));
    else entry.resolve(r);
  }

  /**
   * Starts a worker and brings it to where the last one was: each key's acknowledged ranges are
   * hashed again from the file, then every unanswered range and digest is sent, in order.
   */
  private start(): void {
    this.restartTimer = undefined;
    const pending = this.takePending();
    const w = new Worker(this.module);
    this.started++;
    w.unref();
    w.on("message", (r: Reply) => {
      if (this.worker !== w) return;
      const p = this.waiting.get(r.seq);
      if (!p) return;
      this.waiting.delete(r.seq);
      if (this.waiting.size === 0) w.unref();
      this.settled(p, r);
    });
    let failed = false;
    const fail = (e: Error) => {
      if (failed) return;
      failed = true;
      if (this.worker === w) this.died(e);
    };
    w.on("error", fail);
    w.on("exit", (code) => fail(new Error(`the upload hash worker exited with ${code}`)));
    this.worker = w;
    for (const [key, s] of this.keys)
      if (s.acked > 0)
        this.post(w, {
          m: { kind: "range", seq: 0, key, fd: s.fd, offset: 0, length: s.acked },
          state: s,
          resolve: ignore,
          reject: ignore,
        });
    for (const entry of pending) this.post(w, entry);
  }

  /**
   * The waiting asks, in order, emptied from the table; those whose key was forgotten or failed
   * since are refused (nothing will digest them; their descriptor may be closed already).
   */
  private takePending(): Waiting[] {
    const out: Waiting[] = [];
    for (const entry of this.waiting.values()) {
      if (entry.resolve === ignore) continue;
      if (entry.state !== this.keys.get(entry.m.key)) entry.reject(new Error(`the hash of ${entry.m.key} was abandoned`));
      else out.push(entry);
    }
    this.waiting.clear();
    return out;
  }

  private died(e: Error): void {
    this.worker = undefined;
    if (this.closed) return;
    const now = Date.now();
    this.deaths = [...this.deaths.filter((t) => now - t < this.restarts.windowMs), now];
    const n = this.deaths.length;
    if (n >= this.restarts.max) {
      this.log.error(
        { err: e, deaths: n, windowMs: this.restarts.windowMs },
        "the upload hash worker keeps dying: uploads are hashed on the kernel's thread from now on",
      );
      this.fallBack();
      return;
    }
    const wait = n === 1 ? 0 : Math.min(this.restarts.maxBackoffMs, this.restarts.backoffMs * 2 ** (n - 2));
    this.log.warn(
      { err: e, deaths: n, restartInMs: wait },
      "the upload hash worker died: restarting it, its uploads hashed again from their files",
    );
    this.restartTimer = setTimeout(() => this.start(), wait);
    if (this.waiting.size === 0) this.restartTimer.unref();
  }

  /** Hashing moves to the kernel's thread for good: the same replay, then every waiting ask answered here. */
  private fallBack(): void {
    const h = new RangeHashes();
    const pending = this.takePending();
    for (const [key, s] of this.keys)
      if (s.acked > 0) h.answer({ kind: "range", seq: 0, key, fd: s.fd, offset: 0, length: s.acked });
    this.keys.clear();
    this.inline = h;
    for (const entry of pending) {
      const r = h.answer({ ...entry.m, seq: 1 }) as Reply;
      if (r.error !== undefined) entry.reject(new Error(r.error));
      else entry.resolve(r);
    }
  }
}

function settle(r: Reply | undefined): Promise<Reply> {
  if (r?.error !== undefined) return Promise.reject(new Error(r.error));
  return Promise.resolve(r ?? { seq: 0 });
}
