import { Worker } from "node:worker_threads";
import { createLogger, type Logger } from "../log.js";
import { SliceLoop } from "../slice-loop.js";
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

/**
 * Bytes of one upload hashed per turn of the rotation (and per turn of the event loop once
 * hashing is on the kernel's thread): what another persona's commit may wait behind each of its own.
 */
const HASH_TURN = 1024 * 1024;
/** Turns with the worker at once: one hashed while the next is on its way, so it does not idle for the round trip. */
const IN_FLIGHT = 2;

/** A range (resolved once the hash reached its end) or the digest (the last ask of its upload). */
interface Ask {
  digest: boolean;
  /** A range's end; a digest's declared length. */
  end: number;
  resolve(r: Reply): void;
  reject(e: Error): void;
}

/** One upload's hash: what was asked, what the current hasher (worker or kernel thread) was given and did. */
interface Hashing {
  key: string;
  /** Whose turn it takes in the rotation (the persona). */
  owner: string;
  fd: number;
  /** The end of the ranges asked so far (they follow each other from 0). */
  asked: number;
  /** The end of the bytes given to the current hasher, and of those it acknowledged. */
  sent: number;
  done: number;
  /** Unanswered asks in order: ranges, then perhaps the digest. */
  asks: Ask[];
  /** The digest was asked (no range may follow). */
  sealed: boolean;
  /** The digest is with the current hasher. */
  digesting: boolean;
}

const stopping = () => new Error("the kernel is stopping");

/**
 * Hashes uploads off the kernel's thread: the object's SHA-256 is the one pass over a chunk the
 * kernel's thread no longer makes (the other is the intent hash, which the pipeline needs before
 * anything runs). One worker, started at the first upload, unref'd; it reads the partial files
 * through the descriptors the kernel holds (a worker shares them), which the caller keeps open
 * until the key is digested or forgotten.
 *
 * The one worker is shared fairly: the kernel's thread gives it {@link HASH_TURN} bytes at a
 * time, round-robin over the personas with bytes waiting, then over each persona's uploads, so
 * a commit waits for its own bytes and a turn of each other persona's, not for every upload
 * in progress (one persona's many large uploads cannot hold another's small commit).
 *
 * A worker that dies takes its hashes with it, but not the bytes: its failure is logged and a
 * new worker is started (at once, then after a doubling wait), which hashes each upload again
 * from its partial file up to the ranges asked, turn by turn as above, then every digest asked.
 * Every digest still covers exactly the bytes received (a replay that cannot read them fails
 * the upload). After `restarts.max` deaths within `restarts.windowMs`, hashing stays on the
 * kernel's thread, with the same replay and rotation, one turn per turn of the event loop, so
 * requests are answered between them.
 */
export class UploadHasher {
  private worker: Worker | undefined;
  private inline: RangeHashes | undefined;
  /** The kernel thread's turns once the worker is given up. */
  private readonly loop = new SliceLoop();
  /** Uploads being hashed, by key, and by owner: the rotation (an owner or upload served goes to the back). */
  private readonly byKey = new Map<string, Hashing>();
  private readonly owners = new Map<string, Map<string, Hashing>>();
  /** What the worker was given and has not answered, by sequence number. */
  private readonly inFlight = new Map<number, { h: Hashing; m: HashAsk }>();
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

  /**
   * Resolves once bytes [offset, offset + length) of `fd` are hashed into `key`'s hash: the range
   * right after the last one. `owner` (the persona) is whose turn it takes (by default its own).
   */
  range(key: string, fd: number, offset: number, length: number, owner = key): Promise<void> {
    if (this.closed) return Promise.reject(stopping());
    const h = this.byKey.get(key) ?? this.add(key, owner, fd);
    if (h.sealed || offset !== h.asked) {
      const e = new Error(h.sealed ? `range of ${key} after its digest` : `range at ${offset} of ${key}, expected ${h.asked}`);
      this.fail(h, e);
      this.tellForget(key);
      return Promise.reject(e);
    }
    h.asked += length;
    return new Promise<void>((resolve, reject) => {
      h.asks.push({ digest: false, end: h.asked, resolve: () => resolve(), reject });
      this.settleRanges(h);
      this.pump();
    });
  }

  /** The SHA-256 of `key`'s ranges, once every range it was given resolved; they must cover [0, length). */
  digest(key: string, length: number): Promise<Buffer> {
    if (this.closed) return Promise.reject(stopping());
    const h = this.byKey.get(key) ?? this.add(key, key, -1);
    if (h.sealed) return Promise.reject(new Error(`the digest of ${key} was asked already`));
    h.sealed = true;
    return new Promise<Buffer>((resolve, reject) => {
      h.asks.push({ digest: true, end: length, resolve: (r) => resolve(Buffer.from(r.digest as Uint8Array)), reject });
      this.pump();
    });
  }

  /** Forgets `key` (its descriptor may be closed from now on: nothing reads it again); what it still waits for fails. */
  forget(key: string): void {
    const h = this.byKey.get(key);
    if (h) this.fail(h, new Error(`the hash of ${key} was abandoned`));
    this.tellForget(key);
  }

  /** Ends the worker (the kernel stops): what it was hashing fails. */
  close(): void {
    this.closed = true;
    this.loop.stop();
    clearTimeout(this.restartTimer);
    const w = this.worker;
    this.worker = undefined;
    this.inFlight.clear();
    for (const h of [...this.byKey.values()]) this.fail(h, stopping());
    void w?.terminate();
  }

  private add(key: string, owner: string, fd: number): Hashing {
    const h: Hashing = { key, owner, fd, asked: 0, sent: 0, done: 0, asks: [], sealed: false, digesting: false };
    this.byKey.set(key, h);
    let mine = this.owners.get(owner);
    if (mine === undefined) {
      mine = new Map();
      this.owners.set(owner, mine);
    }
    mine.set(key, h);
    return h;
  }

  /** Takes `h` out of the table and the rotation: replies still due for it are dropped. */
  private remove(h: Hashing): void {
    this.byKey.delete(h.key);
    const mine = this.owners.get(h.owner);
    mine?.delete(h.key);
    if (mine?.size === 0) this.owners.delete(h.owner);
  }

  /** Takes `h` out and fails what it waits for. */
  private fail(h: Hashing, e: Error): void {
    if (this.byKey.get(h.key) !== h) return;
    this.remove(h);
    for (const a of h.asks.splice(0)) a.reject(e);
  }

  private tellForget(key: string): void {
    if (this.inline) this.inline.forget(key);
    else this.worker?.postMessage({ kind: "forget", seq: 0, key });
  }

  /** Whether `h` has a turn to take: bytes asked and not given to the hasher, or its digest once they are all hashed. */
  private static ready(h: Hashing): boolean {
    return h.sent < h.asked || (h.asks[0]?.digest === true && !h.digesting && h.done === h.asked);
  }

  /** The next upload to take a turn: the first owner in the rotation with one ready, its first ready upload; both go to the back. */
  private next(): Hashing | undefined {
    for (const [owner, mine] of this.owners)
      for (const h of mine.values())
        if (UploadHasher.ready(h)) {
          mine.delete(h.key);
          mine.set(h.key, h);
          this.owners.delete(owner);
          this.owners.set(owner, mine);
          return h;
        }
    return undefined;
  }

  /** `h`'s turn: up to {@link HASH_TURN} of its bytes, or its digest. */
  private turn(h: Hashing): HashAsk {
    if (h.sent < h.asked) {
      const length = Math.min(HASH_TURN, h.asked - h.sent);
      const m: HashAsk = { kind: "range", seq: 0, key: h.key, fd: h.fd, offset: h.sent, length };
      h.sent += length;
      return m;
    }
    h.digesting = true;
    return { kind: "digest", seq: 0, key: h.key, length: (h.asks[0] as Ask).end };
  }

  /** The hasher did `m` for `h`: the asks it completes are answered (a failure fails the upload). */
  private answered(h: Hashing, m: HashAsk, r: Reply): void {
    if (this.byKey.get(h.key) !== h) return;
    if (r.error !== undefined) this.fail(h, new Error(r.error));
    else if (m.kind === "digest") {
      // The hasher forgot the key with its digest.
      this.remove(h);
      (h.asks.shift() as Ask).resolve(r);
    } else {
      h.done = (m.offset as number) + (m.length as number);
      this.settleRanges(h);
    }
  }

  private settleRanges(h: Hashing): void {
    while (h.asks[0] !== undefined && !h.asks[0].digest && h.asks[0].end <= h.done) (h.asks.shift() as Ask).resolve({ seq: 0 });
  }

  /** Gives the hasher turns while it has room and an upload has one to take. */
  private pump(): void {
    if (this.closed) return;
    if (this.inline) {
      this.loop.run(() => {
        const h = this.next();
        if (h === undefined) return false;
        const m = this.turn(h);
        this.answered(h, m, (this.inline as RangeHashes).answer({ ...m, seq: 1 }) as Reply);
        return true;
      });
      return;
    }
    const w = this.worker;
    if (w === undefined) {
      if (this.restartTimer) {
        // The restart hashes it; the wait keeps the process alive meanwhile.
        if (this.waited()) this.restartTimer.ref();
      } else if (this.byKey.size > 0) this.start();
      return;
    }
    while (this.inFlight.size < IN_FLIGHT) {
      const h = this.next();
      if (h === undefined) break;
      const m = { ...this.turn(h), seq: ++this.seq };
      this.inFlight.set(m.seq, { h, m });
      w.postMessage(m);
    }
    // Kept alive while it works for someone (its reply, or its exit if it dies), unref'd when idle.
    if (this.inFlight.size > 0) w.ref();
    else w.unref();
  }

  /** Whether anything waits on a hash. */
  private waited(): boolean {
    for (const h of this.byKey.values()) if (h.asks.length > 0) return true;
    return false;
  }

  /** The current hasher lost every hash (a worker died, or hashing moves): each upload is hashed again from 0. */
  private reset(): void {
    this.inFlight.clear();
    for (const h of this.byKey.values()) {
      h.sent = 0;
      h.done = 0;
      h.digesting = false;
    }
  }

  /** Starts a worker; every upload is hashed again in it from its file, turn by turn. */
  private start(): void {
    this.restartTimer = undefined;
    this.reset();
    const w = new Worker(this.module);
    this.started++;
    w.unref();
    w.on("message", (r: Reply) => {
      if (this.worker !== w) return;
      const p = this.inFlight.get(r.seq);
      if (!p) return;
      this.inFlight.delete(r.seq);
      this.answered(p.h, p.m, r);
      this.pump();
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
    this.pump();
  }

  private died(e: Error): void {
    this.worker = undefined;
    this.inFlight.clear();
    if (this.closed) return;
    const now = Date.now();
    this.deaths = [...this.deaths.filter((t) => now - t < this.restarts.windowMs), now];
    const n = this.deaths.length;
    if (n >= this.restarts.max) {
      this.log.error(
        { err: e, deaths: n, windowMs: this.restarts.windowMs },
        "the upload hash worker keeps dying: uploads are hashed on the kernel's thread from now on",
      );
      this.reset();
      this.inline = new RangeHashes();
      this.pump();
      return;
    }
    const wait = n === 1 ? 0 : Math.min(this.restarts.maxBackoffMs, this.restarts.backoffMs * 2 ** (n - 2));
    this.log.warn(
      { err: e, deaths: n, restartInMs: wait },
      "the upload hash worker died: restarting it, its uploads hashed again from their files",
    );
    this.restartTimer = setTimeout(() => this.start(), wait);
    if (!this.waited()) this.restartTimer.unref();
  }
}
