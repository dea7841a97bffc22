import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import { type OpDefinition, storageUploadBegin, storageUploadChunk } from "@kpip/protocol";
import { KpipError, UploadLostError } from "../src/index.js";
import { type OpCall, opCall } from "../src/op-call.js";
import { putLarge } from "../src/storage-large.js";
import { type KernelProcess, kernelPool } from "./harness.js";

const KiB = 1024;
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const pattern = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + 3) & 0xff));

/**
 * A kernel killed (SIGKILL) and restarted in the middle of a chunked upload: uploads do not
 * outlive it (PROTOCOL §9.7), and a `begin` it answered before is replayed after it from its
 * dedupe record with the dead upload's id. The kill comes at an observable point — right after
 * the kernel answered a given call — never after a sleep.
 */
describe("putLarge across a kernel restart", () => {
  const kernel = kernelPool();

  /** `op` that kills and restarts `k` once `when(def)` says so, after that call's answer and before putLarge sees it. */
  const killing = (k: KernelProcess, real: OpCall, when: (def: OpDefinition) => boolean): OpCall =>
    (async (def: OpDefinition, target: string, args: never, opts?: object) => {
      const r = await real(def, target, args, opts);
      if (when(def)) {
        await k.kill();
        await k.start();
      }
      return r;
    }) as OpCall;

  it("a buffer source is uploaded again from a fresh begin when the restarted kernel lost the upload (its begin's answer or a chunk's came before the kill); bounded", async (t) => {
    const k = kernel();
    await k.start();
    const c = await k.connect();
    t.after(() => c.close());
    const real = opCall(c.call.bind(c));
    const data = pattern(256 * KiB);
    const opts = { chunkBytes: 64 * KiB };

    // Killed once the first chunk was answered: the next chunk reaches a kernel with no such upload.
    let chunks = 0;
    const afterChunk = killing(k, real, (d) => d === storageUploadChunk && ++chunks === 1);
    const a = await putLarge(afterChunk, 1 << 20, "obj://ws1/after-chunk", data, opts, () => c.connections);
    assert.equal(Buffer.from(a.sha256).toString("hex"), sha(data));
    assert.equal(c.connections, 2);

    // Killed once the begin was answered: the client holds an id the new kernel never had (as when
    // a begin answered before a restart is resent after it, and replayed from its dedupe record).
    let begins = 0;
    const afterBegin = killing(k, real, (d) => d === storageUploadBegin && ++begins === 1);
    const b = await putLarge(afterBegin, 1 << 20, "obj://ws1/after-begin", data, opts, () => c.connections);
    assert.equal(b.size, data.length);
    assert.equal(begins, 2, "begun once more");
    const parts: Uint8Array[] = [];
    for await (const p of c.storage.readStream("obj://ws1/after-begin")) parts.push(p);
    const back = Buffer.concat(parts);
    assert.equal(sha(back), sha(data));

    // A kernel that loses every upload: a few fresh begins, then UploadLostError naming why.
    let every = 0;
    const always = killing(k, real, (d) => d === storageUploadBegin && ++every > 0);
    await assert.rejects(
      putLarge(always, 1 << 20, "obj://ws1/never", data, opts, () => c.connections),
      (e) => e instanceof UploadLostError && /restart/.test(e.message) && e.cause instanceof KpipError,
    );
    assert.equal(every, 4, "the first begin and three more");
  });

  it("an iterable source (consumed) fails with UploadLostError naming the restart, not a bare SEMANTIC", async (t) => {
    const k = kernel();
    await k.start();
    const c = await k.connect();
    t.after(() => c.close());
    const piece = pattern(64 * KiB);
    // With one chunk in flight the second piece is asked for only once the first chunk was answered.
    async function* source() {
      yield piece;
      await k.kill();
      await k.start();
      yield piece;
    }
    await assert.rejects(
      c.storage.putLarge("obj://ws1/stream", source(), { size: 128 * KiB, chunkBytes: 64 * KiB, window: 1 }),
      (e) => e instanceof UploadLostError && /restart/.test(e.message) && /iterable/.test(e.message),
    );
    // The client goes on: the same object from a fresh source.
    const w = await c.storage.putLarge("obj://ws1/stream", [piece, piece], { size: 128 * KiB, chunkBytes: 64 * KiB });
    assert.equal(w.size, 128 * KiB);
  });
});
