import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { Intent } from "@kpip/protocol";
import { encodeMessage } from "@kpip/protocol";
import Database from "better-sqlite3";
import { HOME_FILES } from "../src/index.js";
import { AnswerBudget } from "../src/pipeline/answer-budget.js";
import { OpError } from "../src/primitives/types.js";
import { removeHome, sandboxSkip, startKernel, until, withKernel } from "./harness.js";
import { RawPeer, requestFrame } from "./wire.js";

const MiB = 1024 * 1024;
const refusedResource = (e: unknown) => e instanceof OpError && e.errorClass === "RESOURCE";

describe("the budget of answers in preparation", () => {
  it("holds per session and in the kernel, always lets one answer through, and gives back on release", () => {
    const b = new AnswerBudget(10, 15);
    const a1 = b.lease("a");
    a1.hold(8);
    const a2 = b.lease("a");
    assert.throws(() => a2.hold(3), refusedResource, "8 + 3 is over the session's 10");
    a2.hold(2);
    const c = b.lease("c");
    assert.throws(() => c.hold(6), refusedResource, "10 + 6 is over the kernel's 15");
    c.hold(5);
    assert.equal(b.held, 15);
    a1.release();
    a1.release(); // once only
    assert.equal(b.held, 7);
    const big = b.lease("d");
    assert.throws(() => big.hold(100), refusedResource, "over the kernel's budget while others hold bytes");
    a2.release();
    c.release();
    assert.equal(b.held, 0);
    big.hold(100); // alone, one answer is never refused (its op's own limits bound it)
    assert.equal(b.held, 100);
    big.release();
    assert.equal(b.held, 0);
  });

  it("counts answers queued unread across the tree and the kernel (the registry's totals): past either bound RESOURCE, nothing queued never refused", () => {
    const queued = { tree: 0, kernel: 0 };
    const b = new AnswerBudget(1000, 1000, {
      totals: { tree: () => queued.tree, kernel: () => queued.kernel },
      perTree: 50,
      kernel: 80,
    });
    const l = b.lease("a");
    l.hold(500); // nothing queued anywhere: one answer is never refused
    l.release();
    queued.tree = 40;
    queued.kernel = 40;
    assert.throws(() => b.lease("a").hold(11), /persona tree's sessions hold 40 bytes \(at most 50/);
    b.lease("a").hold(10);
    // Past the kernel's bound: a tree with answers queued is refused, one with none is not.
    queued.tree = 5;
    queued.kernel = 75;
    assert.throws(
      () => b.lease("b").hold(1),
      /the kernel's answers queued to peers that have not read them hold 75 bytes \(at most 80\), 5 of them/,
    );
    queued.tree = 0;
    b.lease("b").hold(1);
    const c = b.lease("c");
    queued.tree = 5;
    assert.throws(() => c.hold(100));
    c.count(100); // an answer that cannot be refused any more is counted whatever is queued
    assert.equal(b.held, 111);
  });

  it("an EVENT's room is an answer's (queuedRoom): the tree's and the kernel's unread bounds, answers in preparation counted, a tree with nothing queued always has room", () => {
    const queued = { tree: 0, kernel: 0 };
    const b = new AnswerBudget(1000, 1000, {
      totals: { tree: () => queued.tree, kernel: () => queued.kernel },
      perTree: 50,
      kernel: 80,
    });
    assert.equal(b.queuedRoom("a", 500), undefined, "nothing queued to the tree: room");
    queued.tree = 30;
    queued.kernel = 30;
    assert.equal(b.queuedRoom("a", 20), undefined);
    const l = b.lease("a");
    l.hold(10);
    assert.equal(b.queuedRoom("a", 20), "tree", "30 queued + 10 in preparation + 20 is past the tree's 50");
    assert.equal(b.queuedRoom("a", 10), undefined);
    b.lease("b").count(35);
    assert.equal(b.queuedRoom("a", 10), "kernel", "30 queued + 45 in preparation + 10 is past the kernel's 80");
    queued.tree = 0;
    assert.equal(b.queuedRoom("a", 10), undefined, "a tree with nothing queued is never held back by others");
  });

  it("counts bytes queued to the peer, gives back an over-estimate, and counts an answer that cannot be refused", () => {
    const b = new AnswerBudget(10, 100);
    const peer = { buffered: 6 };
    const a = b.lease("a", peer);
    assert.throws(() => a.hold(5), refusedResource, "6 queued + 5 is over the session's 10, even with nothing held");
    assert.throws(() => b.checkRoom("a", 10), refusedResource, "a session whose queue fills its budget runs no read");
    a.hold(4);
    a.giveBack(3);
    assert.equal(a.bytes, 1);
    assert.equal(b.held, 1);
    a.count(50); // an op with effects: counted past the budget, never refused
    assert.equal(b.held, 51);
    peer.buffered = 0;
    assert.throws(() => b.lease("a").hold(1), refusedResource, "the counted bytes fill the session's budget");
    a.release();
    assert.equal(b.held, 0);
    b.checkRoom("a", 0);
  });

  it("pipelined reads of a large object: past the session's budget they are refused RESOURCE before reading; the rest answered whole; retries succeed", async () => {
    // maxWriteBuffer 4 MiB: a session's answers in preparation may hold half of it
    await withKernel({ maxWriteBuffer: 4 * MiB }, async (t) => {
      const admin = await t.admin();
      await admin.storage.write("obj://big/blob", Buffer.alloc(MiB, 7));
      const p = await RawPeer.admin(t);
      // 24 reads of 1 MiB in one write: all decoded and run before the first is answered
      const frames = Array.from({ length: 24 }, (_, i) =>
        requestFrame(100 + i, { op: "storage.read", target: "obj://big/blob", args: {} }),
      );
      p.send(Buffer.concat(frames));
      const answers = await Promise.all(frames.map((_, i) => p.response(100 + i)));
      const ok = answers.filter((r) => r.status === "SUCCESS");
      const refused = answers.filter((r) => r.status === "FAILURE");
      assert.ok(ok.length >= 1, "some reads are answered");
      assert.ok(refused.length >= 1, "reads past the budget are refused");
      for (const r of ok) assert.equal((r.payload as { data: Uint8Array }).data.length, MiB);
      for (const r of refused) {
        assert.equal(r.error, "RESOURCE");
        assert.match(r.message ?? "", /answers in preparation/);
      }
      // once the answers are out, a retry is served
      p.send(requestFrame(200, { op: "storage.read", target: "obj://big/blob", args: {} }));
      assert.equal((await p.response(200)).status, "SUCCESS");
      assert.equal(p.closed, false);
      p.close();
    });
  });

  it("pipelined op.result on a large result: past the session's budget they are refused RESOURCE; the rest answered whole; another session is answered", {
    skip: sandboxSkip,
  }, async () => {
    await withKernel({ maxWriteBuffer: 4 * MiB }, async (t) => {
      const admin = await t.admin();
      const d = await admin.call("compute.submit", "op://command/sh", { args: ["-c", `head -c ${MiB} /dev/zero`] });
      const op = (d.payload as { op: string }).op;
      await admin.ops.wait(op);
      const ok = await burst(t, { op: "op.result", target: op, args: {} });
      for (const r of ok) assert.equal((r.payload as { result: { stdout: Uint8Array } }).result.stdout.length, MiB);
      assert.equal((await admin.call("op.status", op)).status, "SUCCESS", "another session is answered");
    });
  });

  it("an op.result refused by the answer budget does not count as handed out: the result keeps its unread place", async () => {
    const t = await startKernel({ maxWriteBuffer: 4 * MiB }, undefined, (k) =>
      k.registerTask("big", { module: `data:text/javascript,export default () => "x".repeat(${MiB})` }),
    );
    try {
      const admin = await t.admin();
      const submit = async () => (await admin.call("compute.submit", "op://task/big", {})).payload as { op: string; id: string };
      const [filler, mine] = [await submit(), await submit()];
      await admin.ops.wait(filler.op);
      // Waited on by op.status: op.result would hand it out.
      await until(
        async () => ((await admin.call("op.status", mine.op)).payload as { state: string }).state === "succeeded" || undefined,
      );
      // Twelve reads of the filler fill the session's answers in preparation; the last, of `mine`, is refused.
      const p = await RawPeer.admin(t);
      const frames = Array.from({ length: 12 }, (_, i) =>
        requestFrame(100 + i, { op: "op.result", target: filler.op, args: {} }),
      );
      frames.push(requestFrame(200, { op: "op.result", target: mine.op, args: {} }));
      p.send(Buffer.concat(frames));
      await Promise.all(frames.slice(0, 12).map((_, i) => p.response(100 + i)));
      const r = await p.response(200);
      assert.equal(r.error, "RESOURCE", r.message);
      assert.match(r.message ?? "", /answers in preparation/);
      p.close();
      // Never handed out: a trim of the tree's finished ops must still keep it within its grace (case 280).
      const db = new Database(join(t.home, HOME_FILES.database), { readonly: true });
      try {
        const row = db.prepare("SELECT claimed_at FROM ops WHERE id = ?").get(mine.id) as { claimed_at: number | null };
        assert.equal(row.claimed_at, null, "a refused op.result handed nothing out");
      } finally {
        db.close();
      }
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("pipelined agent.logs of a talkative agent: past the session's budget they are refused RESOURCE; the rest answered whole", {
    skip: sandboxSkip,
  }, async () => {
    await withKernel({ maxWriteBuffer: 4 * MiB }, async (t) => {
      const admin = await t.admin();
      await admin.agents.spawn("sh", "loud", { args: ["-c", `head -c ${MiB} /dev/zero`], rights: [], lifetimeMs: 30_000 });
      await until(async () => (await admin.agents.status("agent://sh/loud")).state !== "running" || undefined);
      const ok = await burst(t, { op: "agent.logs", target: "agent://sh/loud", args: {} });
      for (const r of ok) assert.equal((r.payload as { stdout: Uint8Array }).stdout.length, MiB);
    });
  });

  it("pipelined storage.list pages of long paths: the pages' bytes are held like reads, past the budget RESOURCE; the rest answered whole", async () => {
    // 1 MiB of write buffer: half a MiB of answers in preparation per session, each page ~200 KB
    await withKernel({ maxWriteBuffer: MiB }, async (t) => {
      const admin = await t.admin();
      const tail = "/p".repeat(500);
      for (let i = 0; i < 200; i += 50)
        await Promise.all(Array.from({ length: 50 }, (_, j) => admin.storage.write(`obj://ls/d${i + j}${tail}`, "x")));
      const ok = await burst(t, { op: "storage.list", target: "obj://ls", args: { limit: 1000 } });
      for (const r of ok) assert.equal((r.payload as { items: unknown[] }).items.length, 200);
    });
  });
});

/**
 * 24 requests in one write (all run before the first is answered): some answered, the others
 * refused RESOURCE by the budget of answers in preparation; a retry once they are out is served.
 */
async function burst(t: Parameters<typeof RawPeer.admin>[0], intent: Intent) {
  const p = await RawPeer.admin(t);
  const frames = Array.from({ length: 24 }, (_, i) => requestFrame(100 + i, intent));
  p.send(Buffer.concat(frames));
  const answers = await Promise.all(frames.map((_, i) => p.response(100 + i)));
  const ok = answers.filter((r) => r.status === "SUCCESS");
  const refused = answers.filter((r) => r.status !== "SUCCESS");
  assert.ok(ok.length >= 1, "some are answered");
  assert.ok(refused.length >= 1, "those past the budget are refused");
  for (const r of refused) {
    assert.equal(r.error, "RESOURCE");
    assert.match(r.message ?? "", /answers in preparation/);
  }
  // The peer has every answer, but the kernel may not yet have seen its last writes complete
  // (their callbacks can come after the next request in the same turn): retry as a client would.
  let id = 200;
  await until(
    async () => {
      p.send(requestFrame(++id, intent));
      const r = await p.response(id);
      if (r.status !== "SUCCESS") assert.equal(r.error, "RESOURCE", r.message);
      return r.status === "SUCCESS";
    },
    30_000,
    "a retry served once the answers are out",
  );
  assert.equal(p.closed, false);
  p.close();
  return ok;
}

describe("answers queued unread across a persona tree's sessions", () => {
  it("past maxQueuedBytesPerPersona the tree's reads are refused RESOURCE, on any of its sessions; another persona reads; once the peers read, the tree reads again", async () => {
    await withKernel({ maxWriteBuffer: 8 * MiB, maxQueuedBytesPerPersona: 6 * MiB }, async (t) => {
      const admin = await t.admin();
      await admin.storage.write("obj://big/blob", Buffer.alloc(MiB, 7));
      const greedy = await t.persona("greedy", [{ ops: ["storage.read"], targets: ["obj://big/**"] }]);
      const peer = async () => {
        const p = await RawPeer.connect(t.k.socketPath);
        await p.handshake(greedy.identity, [greedy.token]);
        return p;
      };
      const read = (id: number) =>
        requestFrame(id, { op: "storage.read", target: "obj://big/blob", args: {} }, { persona: "greedy" });
      // Eight sessions that never read, each asking for three answers of 1 MiB (within its own budget of 4 MiB).
      const stalled: RawPeer[] = [];
      for (let i = 0; i < 8; i++) {
        const p = await peer();
        p.stall();
        p.send(Buffer.concat([read(1), read(2), read(3)]));
        stalled.push(p);
      }
      // A session of the same persona that reads: refused once the tree's queued answers reach the bound.
      const probe = await peer();
      let id = 10;
      const refusal = await until(
        async () => {
          probe.send(read(++id));
          const r = await probe.response(id);
          return r.status === "FAILURE" ? r : undefined;
        },
        30_000,
        "a read refused for the tree's queued answers",
      );
      assert.equal(refusal.error, "RESOURCE");
      assert.match(refusal.message ?? "", /queued unread to this persona tree's sessions hold \d+ bytes \(at most 6291456/);
      // Held: the stalled sessions' queued answers stay near the bound, not 8 × 3 MiB.
      const queued = t.k.queuedUnreadBytes;
      assert.ok(queued > 0 && queued <= 6 * MiB + 2 * MiB, `${queued} bytes queued to greedy's sessions`);
      // Another tree is not refused.
      assert.equal((await admin.storage.read("obj://big/blob")).data.length, MiB);
      // The peers read what was queued: the tree reads again.
      for (const p of stalled) p.sock.resume();
      const served = await until(
        async () => {
          probe.send(read(++id));
          const r = await probe.response(id);
          return r.status === "SUCCESS" ? r : undefined;
        },
        30_000,
        "a read served once the queued answers were read",
      );
      assert.equal((served.payload as { data: Uint8Array }).data.length, MiB);
      for (const p of [...stalled, probe]) p.close();
      // The running totals are exact: with every session read or closed, nothing is counted.
      await until(() => t.k.queuedUnreadBytes === 0 || undefined, 30_000, "no bytes counted as unread");
    });
  });
});

describe("bytes queued unread that no read refusal bounds (PONGs)", () => {
  it("a persona's sessions that PING and never read are dropped once their tree holds more than maxQueuedBytesPerPersona + maxWriteBuffer; another tree reads meanwhile", async () => {
    // No control-frame rate (which would end each session after its burst, control-frames.test): the tree's bound is tested.
    const bounds = { maxWriteBuffer: 8 * MiB, maxQueuedBytesPerPersona: 6 * MiB, maxQueuedBytes: 16 * MiB, controlFrameRate: 0 };
    await withKernel(bounds, async (t) => {
      const admin = await t.admin();
      await admin.storage.write("obj://big/blob", Buffer.alloc(MiB, 7));
      const pinger = await t.persona("pinger", [{ ops: ["system.health"], targets: ["kernel://"] }]);
      const stalled: RawPeer[] = [];
      for (let i = 0; i < 4; i++) {
        const p = await RawPeer.connect(t.k.socketPath);
        await p.handshake(pinger.identity, [pinger.token]);
        p.sock.pause();
        stalled.push(p);
      }
      const pings = Buffer.concat(Array.from({ length: 5000 }, (_, i) => encodeMessage({ type: "PING", body: { seq: i } })));
      let most = 0;
      // Round-robin, so the four grow alike: each stays under its own 8 MiB while the tree passes 14 MiB.
      await until(
        () => {
          most = Math.max(most, t.k.queuedUnreadBytes);
          if (stalled.some((p) => p.closed)) return true;
          for (const p of stalled) p.send(pings);
          return false;
        },
        120_000,
        "a session of the tree dropped",
      );
      assert.ok(most <= 14 * MiB + 2 * MiB, `the tree's unread bytes reached ${most}, past its hard bound`);
      // Another tree, with nothing queued, is never refused by the kernel's bound.
      assert.equal((await admin.storage.read("obj://big/blob")).data.length, MiB);
      for (const p of stalled) p.close();
    });
  });
});
