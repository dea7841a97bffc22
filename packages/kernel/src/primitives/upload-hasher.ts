import { createHash, type Hash } from "node:crypto";
import { readSync } from "node:fs";
import { Worker } from "node:worker_threads";

/**
 * The SHA-256 of each upload in progress, over the bytes of its partial file, range after range
 * in order. The same code runs on the hash worker and, if the worker cannot run, on the
 * kernel's thread. Reading the ranges back (from the page cache, into one reused buffer) costs
 * a copy; it hashes exactly the bytes the commit will install.
 */
export class RangeHashes {
  private readonly byKey = new Map<string, { hash: Hash; next: number }>();
  private readonly buf = Buffer.allocUnsafe(1024 * 1024);

  /** Hashes bytes [offset, offset + length) of `fd` into `key`'s hash: the range right after the last one. */
  range(key: string, fd: number, offset: number, length: number): void {
    let s = this.byKey.get(key);
    if (s === undefined) {
      s = { hash: createHash("sha256"), next: 0 };
      this.byKey.set(key, s);
    }
    if (offset !== s.next) throw new Error(`range at ${offset} of ${key}, expected ${s.next}`);
    for (let at = offset; at < offset + length; ) {
      const n = readSync(fd, this.buf, 0, Math.min(this.buf.length, offset + length - at), at);
      if (n === 0) throw new Error(`the partial file of ${key} ends at ${at}, before ${offset + length}`);
      s.hash.update(this.buf.subarray(0, n));
      at += n;
    }
    s.next = offset + length;
  }

  /**
   * The SHA-256 of `key`'s ranges, which must cover exactly [0, length) (an upload of no bytes:
   * the hash of none); `key` is forgotten. A hash that lost ranges (a worker that died after
   * hashing them) is refused, never given as the hash of what is left.
   */
  digest(key: string, length: number): Buffer {
    const s = this.byKey.get(key);
    this.byKey.delete(key);
    const hashed = s?.next ?? 0;
    if (hashed !== length) throw new Error(`the hash of ${key} covers ${hashed} bytes, not its ${length}`);
    return (s?.hash ?? createHash("sha256")).digest();
  }

  forget(key: string): void {
    this.byKey.delete(key);
  }
}

type Reply = { seq: number; error?: string; digest?: Uint8Array };

/**
 * Hashes uploads off the kernel's thread: the object's SHA-256 is the one pass over a chunk the
 * kernel's thread no longer makes (the other is the intent hash, which the pipeline needs before
 * anything runs). One worker, started at the first upload, unref'd; it reads the partial files
 * through the descriptors the kernel holds (a worker shares them). If the worker fails, the
 * uploads it was hashing fail and later ones are hashed on the kernel's thread.
 */
export class UploadHasher {
  private worker: Worker | undefined;
  private inline: RangeHashes | undefined;
  private readonly waiting = new Map<number, { resolve: (r: Reply) => void; reject: (e: Error) => void }>();
  private seq = 0;
  private closed = false;

  constructor(private readonly module: URL = new URL("./upload-hash-worker.js", import.meta.url)) {}

  /** Resolves once the range is hashed (the caller keeps `fd` open until then). */
  async range(key: string, fd: number, offset: number, length: number): Promise<void> {
    await this.ask({ kind: "range", key, fd, offset, length });
  }

  /** The SHA-256 of `key`'s ranges, once every range it was given resolved; they must cover [0, length). */
  async digest(key: string, length: number): Promise<Buffer> {
    const r = await this.ask({ kind: "digest", key, length });
    return Buffer.from(r.digest as Uint8Array);
  }

  forget(key: string): void {
    if (this.inline) this.inline.forget(key);
    else this.worker?.postMessage({ kind: "forget", key, seq: 0 });
  }

  /** Ends the worker (the kernel stops): what it was hashing fails. */
  close(): void {
    this.closed = true;
    const w = this.worker;
    this.worker = undefined;
    for (const p of this.waiting.values()) p.reject(new Error("the kernel is stopping"));
    this.waiting.clear();
    void w?.terminate();
  }

  private ask(m: { kind: "range" | "digest"; key: string; fd?: number; offset?: number; length?: number }): Promise<Reply> {
    if (this.closed) return Promise.reject(new Error("the kernel is stopping"));
    if (this.inline) return Promise.resolve(this.runInline(this.inline, m));
    const w = this.start();
    const seq = ++this.seq;
    return new Promise<Reply>((resolve, reject) => {
      this.waiting.set(seq, { resolve, reject });
      // Kept alive while something waits on it (its reply, or its exit if it dies), unref'd when idle.
      if (this.waiting.size === 1) w.ref();
      w.postMessage({ ...m, seq });
    });
  }

  private runInline(h: RangeHashes, m: { kind: string; key: string; fd?: number; offset?: number; length?: number }): Reply {
    if (m.kind === "digest") return { seq: 0, digest: h.digest(m.key, m.length as number) };
    h.range(m.key, m.fd as number, m.offset as number, m.length as number);
    return { seq: 0 };
  }

  private start(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(this.module);
    w.unref();
    w.on("message", (r: Reply) => {
      const p = this.waiting.get(r.seq);
      if (!p) return;
      this.waiting.delete(r.seq);
      if (this.waiting.size === 0) w.unref();
      if (r.error !== undefined) p.reject(new Error(r.error));
      else p.resolve(r);
    });
    const fail = (e: Error) => {
      if (this.worker !== w) return;
      this.worker = undefined;
      // Its hashes are gone: the uploads waiting on it fail; later ones are hashed here.
      if (!this.closed) this.inline = new RangeHashes();
      for (const p of this.waiting.values()) p.reject(e);
      this.waiting.clear();
    };
    w.on("error", fail);
    w.on("exit", (code) => fail(new Error(`the upload hash worker exited with ${code}`)));
    this.worker = w;
    return w;
  }
}
