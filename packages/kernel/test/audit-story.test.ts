import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { KernelClient } from "@kpip/client";
import { outputIncludes } from "@kpip/protocol/testing";
import Database from "better-sqlite3";
import { AuditLog } from "../src/audit/log.js";
import { verifyAudit } from "../src/audit/verify.js";
import { SqliteStore } from "../src/store/sqlite.js";
import type { AuditRow } from "../src/store/types.js";
import { rewriteRecord } from "./audit-fill.js";
import { klass, removeHome, sandboxSkip, startKernel, type TestKernel, until, withKernel } from "./harness.js";

const KPIP = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));
const fixture = (name: string) => fileURLToPath(new URL(`../../test/fixtures/${name}`, import.meta.url));

/** The records of `op`, oldest first, with their detail parsed. */
function records(t: TestKernel | SqliteStore, op: string): (AuditRow & { d: Record<string, unknown> })[] {
  const store = t instanceof SqliteStore ? t : t.k.inspect;
  return store.queryAudit({ op, limit: 1000 }).map((r) => ({ ...r, d: JSON.parse(r.detail ?? "null") }));
}

/**
 * `kpip kernel` on `home` in a child process, once it answers a request: its banner can reach us
 * before it has set its signal handlers, an answer cannot.
 */
async function childKernel(home: string): Promise<ChildProcess> {
  const k = spawn(process.execPath, [KPIP, "kernel", "--home", home, "--log-level", "silent"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  await outputIncludes(k, "is running");
  const c = await KernelClient.connect({
    socket: join(home, "kernel.sock"),
    identity: join(home, "admin.identity"),
    tokens: [readFileSync(join(home, "admin.token"), "utf8").trim()],
    reconnect: false,
  });
  await c.system.health();
  await c.close();
  return k;
}

const exited = (k: ChildProcess) =>
  new Promise<void>((r) => (k.exitCode !== null || k.signalCode !== null ? r() : k.once("exit", () => r())));

describe("records that tell the story", () => {
  it("kernel.start and kernel.stop bracket every run: version, config digest, sandbox, and why it stopped (a signal, stop(), or never)", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-story-"));
    let child: ChildProcess | undefined;
    try {
      child = await childKernel(home);
      child.kill("SIGTERM");
      await exited(child);
      child = await childKernel(home);
      child.kill("SIGKILL");
      await exited(child);
      const t = await startKernel({}, home);
      await t.stop();
      const store = new SqliteStore(join(home, "kernel.db"));
      try {
        const starts = records(store, "kernel.start");
        const stops = records(store, "kernel.stop");
        assert.deepEqual(
          starts.map((r) => r.d.reason),
          ["start", "start", "the previous run ended without kernel.stop (killed or crashed)"],
        );
        assert.deepEqual(
          stops.map((r) => r.d.reason),
          ["SIGTERM", "stop()"],
        );
        for (const r of [...starts, ...stops]) {
          assert.equal(r.phase, "kernel");
          assert.match(String(r.d.version), /^\d+\.\d+\.\d+/);
          assert.match(String(r.d.configDigest), /^[0-9a-f]{64}$/);
          assert.ok(["bwrap", "none"].includes(String(r.d.sandbox)), JSON.stringify(r.d));
        }
        // The in-process kernel's settings differ from the CLI's (log level, read paths): another digest.
        assert.notEqual(starts[2]?.d.configDigest, starts[0]?.d.configDigest);
        assert.equal(verifyAudit(store).ok, true);
      } finally {
        store.close();
      }
    } finally {
      if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      removeHome(home);
    }
  });

  it("an op's life is on the record: created (its id in the submit outcome), running, succeeded, cancelled, interrupted by a stop and by a crash", async () => {
    const setup = (k: TestKernel["k"]) => {
      for (const n of ["square", "spin"]) k.registerTask(n, { module: fixture("tasks.mjs"), export: n });
    };
    const t = await startKernel({ computeWorkers: 2 }, undefined, setup);
    const home = t.home;
    let t2: TestKernel | undefined;
    try {
      const c = await t.admin();
      const sq = await c.compute.task("square", 7);
      assert.equal(await c.ops.wait(sq), 49);
      const submit = records(t, "compute.submit").find((r) => r.phase === "outcome");
      assert.deepEqual(submit?.d, { op: sq.id, status: "DEFERRED" });
      let on: TestKernel = t;
      const states = (id: string) => records(on, "op.state").filter((r) => r.d.op === id);
      await until(() => states(sq.id).length === 3, 30_000, "three states of the square op");
      assert.deepEqual(
        states(sq.id).map((r) => [r.d.state, r.d.from, r.target, r.persona]),
        [
          ["created", null, `op://${sq.id}`, "admin"],
          ["running", "created", `op://${sq.id}`, "admin"],
          ["succeeded", "running", `op://${sq.id}`, "admin"],
        ],
      );
      const cancelled = await c.compute.task("spin", null);
      await until(() => states(cancelled.id).some((r) => r.d.state === "running"), 30_000, "spin running");
      await c.ops.cancel(cancelled);
      await until(() => states(cancelled.id).some((r) => r.d.state === "cancelled"), 30_000, "spin cancelled");
      const killed = await c.compute.task("spin", null);
      await until(() => states(killed.id).some((r) => r.d.state === "running"), 30_000, "second spin running");
      await t.stop();
      // A crash leaves an op recorded running: the next start records it interrupted.
      const store = new SqliteStore(join(home, "kernel.db"));
      const now = Date.now();
      store.insertOp({
        ...(store.getOp(sq.id) as NonNullable<ReturnType<SqliteStore["getOp"]>>),
        id: "ab".repeat(16),
        state: "running",
        finishedAt: null,
        expiresAt: now + 60_000,
      });
      store.close();
      t2 = await startKernel({}, home);
      on = t2;
      const last = (id: string) => states(id).at(-1)?.d;
      assert.deepEqual(last(killed.id), { op: killed.id, state: "interrupted", from: "running", errorClass: "INTERNAL" });
      assert.deepEqual(last("ab".repeat(16)), {
        op: "ab".repeat(16),
        state: "interrupted",
        from: "running",
        errorClass: "INTERNAL",
      });
      const stop = records(t2, "kernel.stop")[0];
      const crashed = last("ab".repeat(16));
      assert.ok(stop && crashed, "both on the record");
      assert.ok(
        (records(t2, "op.state").find((r) => r.d.op === killed.id && r.d.state === "interrupted")?.seq ?? 0) < (stop?.seq ?? 0),
        "an op a stop ends is recorded before kernel.stop",
      );
    } finally {
      if (t2) await t2.stop();
      else await t.stop();
      removeHome(home);
    }
  });

  it("every response has an outcome summary: status, and the generation, handle or allocation it created; never payload bytes", async () => {
    await withKernel({}, async (t) => {
      const c = await t.admin();
      await c.storage.write("obj://ws1/a", Buffer.from("secret payload"));
      await c.storage.write("obj://ws1/a", Buffer.from("again"));
      await c.storage.read("obj://ws1/a");
      await assert.rejects(c.storage.read("obj://ws1/none"), klass("SEMANTIC"));
      const writes = records(t, "storage.write").filter((r) => r.phase === "outcome");
      assert.deepEqual(
        writes.map((r) => r.d),
        [
          { generation: 1, size: 14, status: "SUCCESS" },
          { generation: 2, size: 5, status: "SUCCESS" },
        ],
      );
      const reads = records(t, "storage.read");
      assert.deepEqual(
        reads.map((r) => [r.phase, r.d]),
        [
          ["complete", { generation: 2, status: "SUCCESS" }],
          ["complete", { status: "FAILURE" }],
        ],
      );
      for (const r of t.k.inspect.queryAudit({ limit: 1000 }))
        assert.ok(!(r.detail ?? "").includes("secret"), `no payload in the detail of ${r.op}`);
      const a = await c.resources.alloc("admin", "gpu", 1);
      const alloc = records(t, "resource.alloc").find((r) => r.phase === "outcome");
      assert.deepEqual(alloc?.d, { allocation: a.allocation, status: "SUCCESS" });
    });
  });

  it("an existing home gains the detail column: its old records still verify beside new ones with a detail", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-old-"));
    try {
      const path = join(dir, "kernel.db");
      // The audit table as homes made before the column have it.
      const old = new Database(path);
      old.exec(`CREATE TABLE audit (
        seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, kernel TEXT NOT NULL, session TEXT NOT NULL,
        persona TEXT NOT NULL, phase TEXT NOT NULL, request_id INTEGER, op TEXT, target TEXT,
        intent_hash BLOB, intent BLOB, caps TEXT, status TEXT, error_class TEXT, message TEXT,
        duration_us INTEGER, traceparent TEXT, prev_hash BLOB NOT NULL, hash BLOB NOT NULL,
        execution TEXT, domain TEXT, measurements BLOB)`);
      old.close();
      const key = generateKeyPairSync("ed25519").privateKey;
      let store = new SqliteStore(path);
      let log = new AuditLog(store, "k1", key, { batchMax: 64, checkpointEvery: 100 });
      for (let i = 0; i < 3; i++) void log.append({ session: "s", persona: "p", phase: "complete", op: "system.health" });
      log.close();
      store.close();
      store = new SqliteStore(path);
      log = new AuditLog(store, "k1", key, { batchMax: 64, checkpointEvery: 100 });
      void log.append({ session: "s", persona: "p", phase: "kernel", op: "kernel.start", detail: '{"reason":"start"}' });
      log.close();
      const rows = store.scanAudit(1, 100);
      assert.deepEqual(
        rows.map((r) => r.detail),
        [null, null, null, '{"reason":"start"}'],
      );
      assert.equal(verifyAudit(store).ok, true);
      // The detail is in the hash: changing it breaks the chain at that record.
      rewriteRecord(store.db, 4, (r) => (r.detail = '{"reason":"other"}'));
      assert.equal(verifyAudit(store).firstBad?.seq, 4);
      store.close();
    } finally {
      removeHome(dir);
    }
  });

  it("an agent's life is on the record: spawned (pid, command), exited (code, signal), its token revoked by the kernel, its persona removed", {
    skip: sandboxSkip,
  }, async () => {
    await withKernel({}, async (t) => {
      const c = await t.admin();
      const a = await c.agents.spawn("sleep", "w1", { args: ["300"], rights: [], lifetimeMs: 60_000 });
      await c.agents.kill("agent://sleep/w1");
      await until(() => records(t, "persona.removed").length > 0, 30_000, "the agent's persona removed");
      const spawned = records(t, "agent.spawned")[0];
      assert.equal(spawned?.target, "agent://sleep/w1");
      assert.equal(spawned?.d.persona, "admin/agent.w1");
      assert.equal(spawned?.d.command, "sleep");
      // The host pid is the operator's, on the record; the spawner's answer has none.
      assert.equal(typeof spawned?.d.pid, "number");
      assert.equal("pid" in a, false);
      const exit = records(t, "agent.exited")[0];
      assert.equal(exit?.d.state, "killed");
      assert.ok(exit && "code" in exit.d && "signal" in exit.d, JSON.stringify(exit?.d));
      const revoked = records(t, "token.revoked")[0];
      assert.equal(revoked?.d.revoked, a.token);
      assert.deepEqual(revoked?.d.ended, [a.token]);
      assert.equal(records(t, "persona.removed")[0]?.target, "persona://admin/agent.w1");
      // Killed by agent.kill: its token is revoked at the kill, before its process closed (case 642).
      const order = [spawned, revoked, exit, records(t, "persona.removed")[0]].map((r) => r?.seq ?? 0);
      assert.deepEqual(
        order,
        [...order].sort((x, y) => x - y),
        "spawned, revoked (at the kill), exited, removed: in that order",
      );
      assert.equal(records(t, "token.revoked").length, 1, "its token's revocation is recorded once");
      const out = records(t, "agent.spawn").find((r) => r.phase === "outcome");
      assert.equal(out?.d.agent, spawned?.d.agent);
    });
  });
});
