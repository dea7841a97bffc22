import assert from "node:assert/strict";
import { chmodSync, cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { KernelClient } from "@kpip/client";
import { Kernel } from "@kpip/kernel";
import { generateIdentity, parseIdentity } from "@kpip/protocol";
import { CommandWorker, klass, type ProcessRun } from "@kpip/protocol/testing";
import { hashTree } from "./evidence.js";
import { DISPATCH } from "./run.js";

const TASKS = fileURLToPath(new URL("../../../kernel/test/fixtures/tasks.mjs", import.meta.url));

// The audit tools run in one worker thread, not a process each (the same code, its modules loaded once).
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());

/** `kpip …` on the evidence; asserts no file of it was created, changed or removed. */
async function kpipOn(evidence: string, args: string[]): Promise<ProcessRun> {
  const before = hashTree(evidence);
  const r = await cli.run([...args, "--home", evidence]);
  assert.deepEqual(hashTree(evidence), before, `kpip ${args.join(" ")} changed the home`);
  return r;
}

const lines = (s: string) =>
  s
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);

const TRACE = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT = `00-${TRACE}-00f067aa0ba902b7-01`;
const BLOB = Buffer.from([0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0xff]);

/**
 * The ground truth of a staged incident, as the script below makes it; the assertions then
 * recover each fact from a read-only copy of the home with the audit tools alone.
 */
interface Truth {
  aliceToken: string;
  workerToken: string;
  malloryToken: string;
  cancelledOp: string;
  squareOp: string;
}

async function stageIncident(home: string): Promise<Truth> {
  const start = async () => {
    const k = new Kernel({ home, logLevel: "silent" });
    k.registerTask("square", { module: TASKS, export: "square" });
    k.registerTask("spin", { module: TASKS, export: "spin" });
    await k.start();
    return k;
  };
  const clients: KernelClient[] = [];
  const connect = async (k: Kernel, identity: ReturnType<typeof generateIdentity>, tokens: (Uint8Array | string)[]) => {
    const c = await KernelClient.connect({ socket: k.socketPath, identity, tokens, reconnect: false });
    clients.push(c);
    return c;
  };
  const closeAll = async () => {
    for (const c of clients.splice(0)) await c.close().catch(() => {});
  };
  let k = await start();
  try {
    const adminId = parseIdentity(readFileSync(k.adminIdentity, "utf8"));
    const admin = await connect(k, adminId, [readFileSync(k.adminToken, "utf8").trim()]);
    const alice = generateIdentity("alice");
    const worker = generateIdentity("alice/worker");
    const mallory = generateIdentity("mallory");
    await admin.personas.register("alice", alice.publicKey);
    await admin.personas.register("mallory", mallory.publicKey);
    const a = await admin.tokens.mint("alice", {
      rights: [
        { ops: ["storage.*", "compute.submit", "op.*"], targets: ["obj://proj/**", "op://**"] },
        { ops: ["persona.register", "token.mint"], targets: ["persona://alice/**"] },
      ],
      ttlMs: 3_600_000,
    });
    const m = await admin.tokens.mint("mallory", {
      rights: [{ ops: ["storage.*"], targets: ["obj://mallory/**"] }],
      ttlMs: 3_600_000,
    });
    const asAlice = await connect(k, alice, [a.token]);
    await asAlice.storage.write("obj://proj/data/blob", BLOB);
    await asAlice.storage.write("obj://proj/data/notes", new TextEncoder().encode("quarterly numbers"));
    // A sub-persona with a token narrower than alice's: reads of proj/data only.
    await asAlice.personas.register("alice/worker", worker.publicKey);
    const w = await asAlice.tokens.mint("alice/worker", {
      rights: [{ ops: ["storage.read"], targets: ["obj://proj/data/**"] }],
      ttlMs: 600_000,
    });
    const asWorker = await connect(k, worker, [w.token]);
    await asWorker.storage.read("obj://proj/data/notes", { traceparent: TRACEPARENT });
    await assert.rejects(asWorker.storage.write("obj://proj/data/notes", new Uint8Array([1])), /PERMISSION|no capability/);
    // Compute: one op that completes, one cancelled while it runs.
    const sq = await asAlice.compute.task("square", 7);
    assert.equal(await asAlice.ops.wait(sq), 49);
    const spin = await asAlice.compute.task("spin", null);
    assert.equal(await asAlice.ops.cancel(spin), true);
    // Mallory presents alice's token inline: refused.
    const asMallory = await connect(k, mallory, [m.token]);
    await assert.rejects(asMallory.call("storage.read", "obj://proj/data/blob", {}, { caps: [a.token] }), klass("CAPABILITY"));
    // Mallory writes her own object presenting alice's token first, then her own handle: the
    // kernel examines alice's (refused: not hers), and hers allows. Both are in the record's caps.
    await asMallory.call("storage.write", "obj://mallory/loot", { data: new Uint8Array([7]) }, { caps: [a.token, 1] });
    // The admin revokes alice's token: the worker's, minted from it, ends with it.
    await admin.tokens.revoke(a.id);
    await closeAll();
    await k.stop();
    // A restart; the worker comes back with its (now dead) token.
    k = await start();
    const again = await connect(k, worker, []);
    await assert.rejects(again.call("storage.read", "obj://proj/data/notes", {}, { caps: [w.token] }), /revoked|REVOKED/);
    return { aliceToken: a.id, workerToken: w.id, malloryToken: m.id, cancelledOp: spin.id, squareOp: sq.id };
  } finally {
    await closeAll();
    await k.stop();
  }
}

describe("a post-mortem from a read-only copy of the home alone", () => {
  const home = mkdtempSync(join(tmpdir(), "kpip-incident-"));
  const evidence = join(mkdtempSync(join(tmpdir(), "kpip-evidence-")), "home");
  let truth: Truth;
  const timeline = async (...args: string[]) => {
    const r = await kpipOn(evidence, ["audit", "timeline", "--json", "--limit", "1000", ...args]);
    assert.equal(r.code, 0, r.err);
    return lines(r.out);
  };

  before(async () => {
    truth = await stageIncident(home);
    cpSync(home, evidence, { recursive: true });
    const ro = (p: string) => {
      for (const e of readdirSync(p, { withFileTypes: true })) {
        if (e.isDirectory()) ro(join(p, e.name));
        else chmodSync(join(p, e.name), statSync(join(p, e.name)).mode & 0o555);
      }
      chmodSync(p, 0o555);
    };
    ro(evidence);
  });
  after(() => {
    rmSync(home, { recursive: true, force: true });
    const parent = join(evidence, "..");
    for (const d of [evidence, parent]) chmodSync(d, 0o755);
    rmSync(parent, { recursive: true, force: true });
  });

  it("who did what: one row per request, the sub-persona's under alice/**, with token and trace", async () => {
    const all = await timeline();
    const writes = all.filter((r) => r.op === "storage.write" && r.persona === "alice");
    assert.equal(writes.length, 2);
    for (const r of writes) {
      assert.equal(r.phase, "intent", "an op with effects: its intent, merged with its outcome");
      assert.equal(r.status, "SUCCESS");
      assert.ok(typeof r.outcomeSeq === "number" && r.outcomeSeq > (r.seq as number));
      assert.ok((r.end as string) >= (r.start as string) && (r.start as string).endsWith("Z"));
      assert.deepEqual(r.tokens, [truth.aliceToken]);
    }
    const subtree = await timeline("--persona", "alice/**");
    assert.ok(subtree.some((r) => r.persona === "alice/worker") && subtree.some((r) => r.persona === "alice"));
    assert.ok(subtree.every((r) => r.persona === "alice" || r.persona === "alice/worker"));
    assert.ok((await timeline("--persona", "alice")).every((r) => r.persona === "alice"));
    const traced = await timeline("--trace", TRACE);
    assert.deepEqual(
      traced.map((r) => [r.persona, r.op, r.target, r.status, r.tokens]),
      [["alice/worker", "storage.read", "obj://proj/data/notes", "SUCCESS", [truth.workerToken]]],
    );
    const refusedWrite = (await timeline("--persona", "alice/worker", "--op", "storage.*")).filter(
      (r) => r.op === "storage.write",
    );
    assert.deepEqual(
      refusedWrite.map((r) => [r.phase, r.status, r.errorClass]),
      [["refused", "FAILURE", "PERMISSION"]],
    );
    const byToken = await timeline("--token", truth.workerToken);
    assert.ok(byToken.some((r) => r.op === "storage.read" && r.persona === "alice/worker"));
    assert.ok(byToken.every((r) => r.persona !== "mallory"));
  });

  it("a refused use of another persona's token is on the record as mallory's", async () => {
    const m = await timeline("--persona", "mallory", "--target", "obj://proj/**");
    assert.equal(m.length, 1);
    assert.equal(m[0]?.op, "storage.read");
    assert.equal(m[0]?.status, "FAILURE");
    assert.equal(m[0]?.errorClass, "CAPABILITY");
    assert.match(m[0]?.message as string, /another persona|not usable by|alice/);
  });

  it("compute: the submits, and the cancel of the op that was cancelled", async () => {
    const submits = await timeline("--op", "compute.*", "--persona", "alice");
    assert.deepEqual(
      submits.map((r) => [r.target, r.status]),
      [
        ["op://task/square", "DEFERRED"],
        ["op://task/spin", "DEFERRED"],
      ],
    );
    const cancel = await timeline("--target", `op://${truth.cancelledOp}`, "--op", "op.cancel");
    assert.deepEqual(
      cancel.map((r) => [r.persona, r.status]),
      [["alice", "SUCCESS"]],
    );
  });

  it("show: the decoded intent with its outcome, bytes as hex or text, --raw writes exactly what was sent", async () => {
    const blob = (await timeline("--target", "obj://proj/data/blob", "--op", "storage.write"))[0] as Record<string, unknown>;
    const r = await kpipOn(evidence, ["audit", "show", String(blob.seq), "--json"]);
    assert.equal(r.code, 0, r.err);
    const s = JSON.parse(r.out);
    assert.equal(s.intent.op, "storage.write");
    assert.equal(s.intent.target, "obj://proj/data/blob");
    assert.deepEqual(s.intent.args.data, { $hex: BLOB.toString("hex") });
    assert.equal(s.outcomeRecord.seq, blob.outcomeSeq);
    assert.equal(s.outcomeRecord.status, "SUCCESS");
    assert.deepEqual(s.record.tokens, [truth.aliceToken]);
    const notes = (await timeline("--target", "obj://proj/data/notes", "--op", "storage.write", "--persona", "alice"))[0];
    const text = await kpipOn(evidence, ["audit", "show", String(notes?.seq)]);
    assert.match(text.out, /data: "quarterly numbers"/);
    assert.match(text.out, /its outcome \(record \d+, outcome/);
    const out = join(mkdtempSync(join(tmpdir(), "kpip-raw-")), "body.bin");
    const raw = await kpipOn(evidence, ["audit", "show", String(blob.seq), "--raw", out, "--body", "args.data"]);
    assert.equal(raw.code, 0, raw.err);
    assert.deepEqual(readFileSync(out), BLOB);
    rmSync(join(out, ".."), { recursive: true, force: true });
  });

  it("tokens: where the worker's token came from, and what alice's revocation ended", async () => {
    const r = await kpipOn(evidence, ["audit", "tokens", "--json"]);
    assert.equal(r.code, 0, r.err);
    interface Node {
      parent: string;
      sub: string;
      mintedBy: string;
      how: string;
      rights: unknown;
      record: number;
      revoked: { by: string; record: number; ended: string[] } | null;
      endedBy: string | null;
    }
    const t = new Map(lines(r.out).map((n) => [n.id as string, n as unknown as Node]));
    const alice = t.get(truth.aliceToken) as Node;
    const worker = t.get(truth.workerToken) as Node;
    assert.equal(alice.sub, "alice");
    assert.equal(alice.mintedBy, "admin");
    assert.equal(t.get(alice.parent)?.how, "kernel", "alice's token comes from the admin's root token");
    assert.equal(worker.parent, truth.aliceToken);
    assert.equal(worker.sub, "alice/worker");
    assert.equal(worker.mintedBy, "alice");
    assert.deepEqual(worker.rights, [["storage.read", "obj://proj/data/**"]], "rights as (op, target) pairs");
    assert.equal(alice.revoked?.by, "admin");
    assert.equal(typeof alice.revoked?.record, "number");
    assert.ok(alice.revoked?.ended.includes(truth.workerToken));
    assert.equal(worker.endedBy, truth.aliceToken);
    assert.equal(worker.revoked, null);
    // The mint record named by the tree is the request alice made.
    const mint = JSON.parse((await kpipOn(evidence, ["audit", "show", String(worker.record), "--json"])).out);
    assert.equal(mint.record.persona, "alice");
    assert.equal(mint.record.op, "token.mint");
    const revoke = JSON.parse((await kpipOn(evidence, ["audit", "show", String(alice.revoked?.record), "--json"])).out);
    assert.equal(revoke.record.target, `token://${truth.aliceToken}`);
    const chain = await kpipOn(evidence, ["audit", "tokens", "--token", truth.workerToken.slice(0, 8)]);
    assert.match(chain.out, new RegExp(`${truth.aliceToken}[\\s\\S]*REVOKED by admin[\\s\\S]*└─ ${truth.workerToken}`));
    assert.match(chain.out, new RegExp(`ended by the revocation of ${truth.aliceToken}`));
    const dot = await kpipOn(evidence, ["audit", "tokens", "--format", "dot"]);
    assert.match(dot.out, new RegExp(`"${truth.aliceToken}" -> "${truth.workerToken}"`));
  });

  it("the restart: two kernel starts on the record, and the dead token refused after it", async () => {
    // A start is kernel.start (kernel.sandbox in kernels before it): session "kernel".
    const starts = (await timeline("--session", "kernel", "--op", "kernel.*")).filter(
      (r) => r.op === "kernel.start" || r.op === "kernel.sandbox",
    );
    assert.equal(starts.length, 2);
    const after = await timeline("--persona", "alice/worker", "--since", starts[1]?.start as string);
    const refused = after.filter((r) => r.phase === "refused");
    assert.equal(refused.length, 1);
    assert.equal(refused[0]?.errorClass, "CAPABILITY");
    assert.match(refused[0]?.message as string, /revoked/);
  });

  it("verify says what it proved: head, checkpoints, no anchors, and the unsigned tail", async () => {
    const r = await kpipOn(evidence, ["audit", "verify", "--json"]);
    assert.equal(r.code, 0, r.out);
    const v = JSON.parse(r.out);
    const last = (await timeline()).at(-1) as Record<string, unknown>;
    assert.equal(v.head.seq, (last.outcomeSeq as number | null) ?? last.seq);
    assert.match(v.head.hash, /^[0-9a-f]{64}$/);
    assert.equal(v.keySource, "kernel.key");
    assert.ok(v.checkpointSeqs.length >= 2, "each stop signs a checkpoint");
    assert.equal(v.checkpointSeqs.at(-1), v.head.seq, "a clean stop leaves nothing unsigned");
    assert.equal(v.unsignedTail, null);
    assert.equal(v.anchors, null);
    assert.ok(v.warnings.some((w: string) => /NO ANCHORS CHECKED/.test(w)));
    const text = await kpipOn(evidence, ["audit", "verify"]);
    assert.match(text.out, /^audit log OK: /);
    assert.match(text.out, /\nhead {9}record \d+ at .*Z, hash [0-9a-f]{64}\n/);
    assert.match(text.out, /WARNING: NO ANCHORS CHECKED/);
  });

  it("the kernel's runs bracketed by kernel.start and kernel.stop, with their reasons", async () => {
    const runs = await timeline("--session", "kernel", "--op", "kernel.st*");
    assert.deepEqual(
      runs.map((r) => [r.op, (r.detail as { reason: string }).reason]),
      [
        ["kernel.start", "start"],
        ["kernel.stop", "stop()"],
        ["kernel.start", "start"],
        ["kernel.stop", "stop()"],
      ],
    );
    for (const r of runs) {
      const d = r.detail as Record<string, unknown>;
      assert.match(d.configDigest as string, /^[0-9a-f]{64}$/);
      assert.ok(["bwrap", "none"].includes(d.sandbox as string));
      assert.equal(typeof d.version, "string");
    }
  });

  it("each op's life, the cancelled one ending cancelled, and the submit naming its op id", async () => {
    const states = async (op: string) =>
      (await timeline("--target", `op://${op}`, "--op", "op.state")).map((r) => [
        (r.detail as { state: string }).state,
        (r.detail as { from: string | null }).from,
      ]);
    const spin = await states(truth.cancelledOp);
    assert.deepEqual(spin[0], ["created", null]);
    assert.deepEqual(spin.at(-1)?.[0], "cancelled");
    const square = await states(truth.squareOp);
    assert.deepEqual(square.at(-1), ["succeeded", "running"]);
    const submits = await timeline("--op", "compute.submit", "--persona", "alice");
    assert.deepEqual(
      submits.map((r) => (r.detail as { op: string }).op),
      [truth.squareOp, truth.cancelledOp],
    );
    // the op rows are alice's, on the session that submitted them
    for (const r of await timeline("--target", `op://${truth.cancelledOp}`, "--op", "op.state")) assert.equal(r.persona, "alice");
  });

  it("mint and revoke records name the tokens exactly; the refused inline token is named", async () => {
    const r = await kpipOn(evidence, ["audit", "tokens", "--json"]);
    const t = new Map(lines(r.out).map((n) => [n.id as string, n]));
    const worker = t.get(truth.workerToken) as { recordBy: string; parent: string; caveats: unknown };
    assert.equal(worker.recordBy, "detail", "the mint record names the token it made");
    assert.equal(worker.parent, truth.aliceToken);
    const mint = await timeline("--op", "token.mint", "--persona", "alice");
    assert.equal((mint[0]?.detail as { token: { id: string } } | undefined)?.token.id, truth.workerToken);
    const revoke = await timeline("--op", "token.revoke", "--target", `token://${truth.aliceToken}`);
    const ended = (revoke[0]?.detail as { ended: string[] } | undefined)?.ended ?? [];
    assert.ok(ended.includes(truth.aliceToken) && ended.includes(truth.workerToken));
    // mallory's refused request names the token it presented: alice's
    const byAlicesToken = (await timeline("--token", truth.aliceToken)).filter((x) => x.persona === "mallory");
    assert.deepEqual(
      byAlicesToken.map((x) => [x.op, x.errorClass]),
      [["storage.read", "CAPABILITY"]],
    );
  });

  it("a request's token is the one that authorized it, not one it only presented before it", async () => {
    const loot = await timeline("--target", "obj://mallory/loot");
    assert.deepEqual(
      loot.map((x) => [x.persona, x.op, x.status, x.tokens]),
      [["mallory", "storage.write", "SUCCESS", [truth.malloryToken]]],
    );
    assert.ok(
      !(await timeline("--token", truth.aliceToken)).some((x) => x.target === "obj://mallory/loot"),
      "alice's token, which mallory presented and the kernel refused, did not do mallory's write",
    );
    // What was presented stays on the record, in order.
    const shown = lines((await kpipOn(evidence, ["audit", "show", String(loot[0]?.seq), "--json"])).out)[0] as {
      record: { caps: string; tokens: string[] };
    };
    assert.deepEqual(shown.record.tokens, [truth.malloryToken]);
    assert.equal(shown.record.caps, `inline:${truth.aliceToken},h1:${truth.malloryToken}`);
  });

  it("every outcome says what it created (a write's generation and size)", async () => {
    const blob = (await timeline("--target", "obj://proj/data/blob", "--op", "storage.write"))[0];
    assert.deepEqual(blob?.detail, { generation: 1, size: 7, status: "SUCCESS" });
  });
});
