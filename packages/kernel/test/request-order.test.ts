import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Intent } from "@kpip/protocol";
import type { Authorizer, Decision } from "../src/auth/authorizer.js";
import { HASH_SLICE } from "../src/sliced-hash.js";
import type { TestKernel } from "./harness.js";
import { allAudit, type RawPeer, rawPeerKernel, requestFrame, stopRawPeerKernel } from "./wire.js";

// A session's requests reach dedupe (their claim on a request id), the rate and their handlers in
// the order they arrived (PROTOCOL §9 relies on it), however many waits each has before:
// a large intent is hashed a slice per turn, and an embedder's authorizer (new Kernel({ authorizer }))
// may decide some requests later than others (a remote policy, a cache miss).

/** Allows everything; a large intent's decision comes two turns later. */
const authorizer: Authorizer = {
  authorize(r) {
    const d: Decision = { allowed: true, capIds: ["embedder"] };
    const data = (r.intent.args as { data?: unknown }).data;
    if (!(data instanceof Uint8Array) || data.length < HASH_SLICE) return d;
    return new Promise<Decision>((ok) => setImmediate(() => setImmediate(() => ok(d))));
  },
};

describe("a session's requests reach dedupe in the order they arrived (a real kernel, an embedder's authorizer)", () => {
  let t: TestKernel | undefined;
  let p: RawPeer | undefined;
  before(async () => {
    ({ t, p } = await rawPeerKernel({ authorizer }));
  });
  after(() => stopRawPeerKernel(t, p));

  it("a large intent (hashed in slices, decided later) then a small one under the same id: the first claims the id, the second is id reuse", async () => {
    const peer = p as RawPeer;
    const big: Intent = {
      op: "storage.write",
      target: "obj://order/big",
      args: { data: new Uint8Array(HASH_SLICE + 1024).fill(1) },
    };
    const small: Intent = { op: "storage.write", target: "obj://order/small", args: { data: "x" } };
    // One write: the small request arrives while the large one is hashed.
    peer.send(Buffer.concat([requestFrame(7, big, { caps: [1] }), requestFrame(7, small, { caps: [1] })]));
    const answers = [await peer.response(7), await peer.response(7)].map((a) => `${a.status} ${a.error ?? ""}`).sort();
    assert.deepEqual(answers, ["FAILURE SEMANTIC", "SUCCESS "]);
    const records = (target: string) =>
      allAudit((t as TestKernel).k)
        .filter((r) => r.requestId === 7 && r.target === target)
        .map((r) => `${r.phase}:${r.errorClass ?? r.status}`);
    assert.deepEqual(records("obj://order/big"), ["intent:null", "outcome:SUCCESS"], "the first to arrive ran");
    assert.deepEqual(records("obj://order/small"), ["refused:SEMANTIC"], "the later one reused its id");
  });
});
