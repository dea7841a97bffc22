import { createHash, type Hash } from "node:crypto";
import { readSync } from "node:fs";

/** A message to the hash worker; `seq` 0 asks for no reply. */
export type HashAsk = {
  kind: "range" | "digest" | "forget";
  seq: number;
  key: string;
  fd?: number;
  offset?: number;
  length?: number;
};
export type HashReply = { seq: number; error?: string; digest?: Uint8Array };

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
   * the hash of none); `key` is forgotten. A hash that lost ranges is refused, never given as
   * the hash of what is left.
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

  /**
   * Does what `m` asks (the worker's loop and the kernel thread's fallback share it): the reply,
   * or undefined when none is asked for. A range or digest that fails forgets its key, so its
   * next range fails too.
   */
  answer(m: HashAsk): HashReply | undefined {
    try {
      if (m.kind === "forget") this.forget(m.key);
      else if (m.kind === "digest") return { seq: m.seq, digest: this.digest(m.key, m.length as number) };
      else this.range(m.key, m.fd as number, m.offset as number, m.length as number);
      return m.seq === 0 ? undefined : { seq: m.seq };
    } catch (e) {
      this.forget(m.key);
      return { seq: m.seq, error: (e as Error).message };
    }
  }
}
