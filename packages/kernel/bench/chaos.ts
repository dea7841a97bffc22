/**
 * `npm run chaos -- --cycles N [--seed S] [--clients C] [--json]`
 *
 * Crash consistency under SIGKILL. The kernel runs in its own process on one home kept across
 * cycles; C clients write self-checking objects (random bytes followed by their SHA-256),
 * emit events and start long DEFERRED ops; at a random moment the kernel is SIGKILLed and
 * restarted. After each restart:
 *   1. `audit verify` passes on the whole chain;
 *   2. every request a client got SUCCESS for has its outcome in the audit log;
 *   3. storage holds exactly the acknowledged writes: each acknowledged key has its value,
 *      no object is torn (its trailing SHA-256 checks), no object exists whose write was never
 *      sent, and every object has the audit "intent" record written before it and one SUCCESS
 *      outcome record (one the kill cut off is written by the restart);
 *   4. DEFERRED ops that were running are reported failed (INTERNAL);
 *   5. chunked uploads (one client puts objects larger than the inline size in chunks): each
 *      acknowledged commit's object reads back whole, every object an upload made has its
 *      commit's intent and one SUCCESS outcome, and no partial upload file or unnamed body is left;
 *   6. tokens (one client mints and revokes): every revocation the store holds has its
 *      `token.revoke` SUCCESS outcome on the record, every acknowledged revocation is in force
 *      (its token is refused by the restarted kernel), every acknowledged mint is stored;
 *   7. personas (one client registers and removes): an acknowledged registration not since removed
 *      is in the registry, an acknowledged removal is not; a persona there has its
 *      `persona.register` SUCCESS outcome, and one registered (on the record) and gone has its
 *      `persona.remove` SUCCESS outcome.
 * Exit 1 on any violation, each described precisely.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { KernelClient } from "@kpip/client";
import { generateIdentity } from "@kpip/protocol";
import { outputIncludes } from "@kpip/protocol/testing";
import { verifyAudit } from "../src/audit/verify.js";
import { SqliteStore } from "../src/store/sqlite.js";
import type { AuditRow } from "../src/store/types.js";

const argv = process.argv.slice(2);
const int = (name: string, dflt: number) => {
  const i = argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(argv[i + 1]) : dflt;
  if (!Number.isSafeInteger(v) || v < 0) {
    console.error(`--${name} must be a non-negative integer`);
    process.exit(2);
  }
  return v;
};
const CYCLES = Math.max(1, int("cycles", 20));
const SEED = int("seed", Date.now() % 2 ** 31);
const CLIENTS = Math.max(1, int("clients", 4));
const JSON_OUT = argv.includes("--json");
/** Test hook: corrupts one acknowledged object after the first restart, to prove the checks catch it. */
const INJECT_FAULT = argv.includes("--inject-fault");
const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

/** mulberry32, so a run can be repeated with --seed. */
let state = SEED >>> 0;
const rand = () => {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};

const home = mkdtempSync(join(tmpdir(), "kpip-chaos-"));
const socket = join(home, "kernel.sock");
let kernel: ChildProcess | undefined;

async function startKernel(): Promise<void> {
  const k = spawn(process.execPath, [MAIN, "kernel", "--home", home, "--log-level", "silent"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  kernel = k;
  await outputIncludes(k, "is running");
}

const connect = () =>
  KernelClient.connect({
    socket,
    identity: join(home, "admin.identity"),
    tokens: [readFileSync(join(home, "admin.token"), "utf8")],
    reconnect: false,
  });

/** A value that carries its own checksum: torn or mixed bytes cannot pass. */
function selfChecking(n: number, size = 16 + Math.floor(rand() * 4000)): Buffer {
  const body = Buffer.alloc(size);
  for (let i = 0; i < body.length; i++) body[i] = Math.floor(rand() * 256);
  body.writeUInt32BE(n, 0);
  return Buffer.concat([body, createHash("sha256").update(body).digest()]);
}
const intact = (v: Uint8Array) =>
  v.length > 32 &&
  createHash("sha256")
    .update(v.subarray(0, v.length - 32))
    .digest()
    .equals(Buffer.from(v.subarray(v.length - 32)));
const digest = (v: Uint8Array) => createHash("sha256").update(v).digest("hex");

interface CycleFacts {
  acked: Map<string, string>; // key → digest of the acknowledged value
  sent: Set<string>; // every key whose write left the client
  deferred: Parameters<KernelClient["ops"]["status"]>[0][]; // DEFERRED ops acknowledged
  events: number;
  uploads: Map<string, string>; // key → digest of an acknowledged upload commit
  uploadsSent: Set<string>; // every key whose upload began
  minted: Map<string, Uint8Array>; // acknowledged token.mint: id → token
  revoked: Set<string>; // acknowledged token.revoke
  personasSent: Set<string>; // persona.register sent
  registered: Set<string>; // acknowledged persona.register
  removalsSent: Set<string>; // persona.remove sent
  removed: Set<string>; // acknowledged persona.remove
}

const totals = {
  cycles: 0,
  ackedWrites: 0,
  checkedObjects: 0,
  auditRecords: 0,
  deferredRunning: 0,
  deferredFailed: 0,
  events: 0,
  ackedUploads: 0,
  ackedRevocations: 0,
  ackedPersonaOps: 0,
  violations: 0,
};
const violations: string[] = [];
const violate = (cycle: number, what: string) => {
  totals.violations++;
  if (violations.length < 50) violations.push(`cycle ${cycle}: ${what}`);
};

/** Clients load the kernel until it dies under them. */
/**
 * Drives the kernel until it dies. `underway` is called once the clients are connected, the
 * long ops started and a first write acknowledged: the kill is timed from then, so a slow
 * machine never kills the kernel before the load it is meant to interrupt has begun.
 */
async function load(cycle: number, facts: CycleFacts, underway: () => void): Promise<void> {
  const clients = await Promise.all(Array.from({ length: CLIENTS }, () => connect()));
  // Long DEFERRED ops that will be running when the kernel dies.
  for (const c of clients.slice(0, 2)) {
    const d = await c.compute.command("sleep", ["60"]);
    facts.deferred.push(d);
  }
  let n = 0;
  const lanes = [
    uploads(clients[0] as KernelClient, cycle, facts),
    tokens(clients[1 % CLIENTS] as KernelClient, facts),
    personas(clients[2 % CLIENTS] as KernelClient, cycle, facts),
  ];
  await Promise.all(
    clients.map(async (c, ci) => {
      for (;;) {
        const key = `obj://chaos/c${cycle}/w${ci}/k${n++}`;
        const value = selfChecking(n);
        facts.sent.add(key);
        try {
          await c.storage.write(key, value);
          facts.acked.set(key, digest(value));
          underway();
          if (rand() < 0.2) {
            await c.events.emit(`topic://chaos/c${cycle}`, { n });
            facts.events++;
          }
        } catch {
          return; // the kernel is gone
        }
      }
    }),
  );
  await Promise.all(lanes);
  for (const c of clients) await c.close().catch(() => {});
}

/** Objects past the inline size (file-store bodies), in chunks, until the kernel dies. */
async function uploads(c: KernelClient, cycle: number, facts: CycleFacts): Promise<void> {
  for (let i = 0; ; i++) {
    const key = `obj://chaos/u${cycle}/${i}`;
    const value = selfChecking(i, 130 * 1024 + Math.floor(rand() * 64 * 1024));
    facts.uploadsSent.add(key);
    try {
      await c.storage.putLarge(key, value, { chunkBytes: 32 * 1024 });
      facts.uploads.set(key, digest(value));
    } catch {
      return;
    }
  }
}

/** Personas registered and removed, until the kernel dies. */
async function personas(c: KernelClient, cycle: number, facts: CycleFacts): Promise<void> {
  const { publicKey } = generateIdentity("chaos");
  for (let i = 0; ; i++) {
    const id = `chaos-c${cycle}-p${i}`;
    facts.personasSent.add(id);
    try {
      await c.personas.register(id, publicKey);
      facts.registered.add(id);
      facts.removalsSent.add(id);
      await c.personas.remove(id);
      facts.removed.add(id);
    } catch {
      return;
    }
  }
}

/** Tokens minted and revoked, until the kernel dies. */
async function tokens(c: KernelClient, facts: CycleFacts): Promise<void> {
  for (;;) {
    try {
      const m = await c.tokens.mint("admin", { rights: [{ ops: ["system.health"], targets: ["kernel://"] }], ttlMs: 3_600_000 });
      facts.minted.set(m.id, m.token);
      await c.tokens.revoke(m.id);
      facts.revoked.add(m.id);
    } catch {
      return;
    }
  }
}

async function check(cycle: number, facts: CycleFacts): Promise<void> {
  // 1. the chain verifies (read through a second connection while the kernel runs).
  const store = new SqliteStore(join(home, "kernel.db"));
  try {
    const v = verifyAudit(store);
    if (!v.ok) violate(cycle, `audit verify failed at record ${v.firstBad?.seq}: ${v.firstBad?.reason}`);
    totals.auditRecords = v.records;
    // One scan of this cycle's write records (the audit table has no index on target).
    const outcomes = new Map<string, number>();
    const intents = new Set<string>();
    // The fields are in the records' bytes: every record is read back.
    const prefix = `obj://chaos/c${cycle}/`;
    const rows: AuditRow[] = [];
    const commits: AuditRow[] = [];
    const revokes: AuditRow[] = [];
    const personaOps: AuditRow[] = [];
    for (let from = 1; ; ) {
      const batch = store.scanAudit(from, 10_000);
      if (batch.length === 0) break;
      for (const r of batch) {
        if (r.op === "storage.write" && r.target?.startsWith(prefix)) rows.push(r);
        else if (r.op === "storage.upload.commit" && r.target?.startsWith(`obj://chaos/u${cycle}/`)) commits.push(r);
        else if (r.op === "token.revoke") revokes.push(r);
        else if ((r.op === "persona.register" || r.op === "persona.remove") && r.target?.startsWith(`persona://chaos-c${cycle}-`))
          personaOps.push(r);
      }
      from = (batch.at(-1) as AuditRow).seq + 1;
    }
    for (const r of rows) {
      const target = r.target as string;
      if (r.phase === "intent") intents.add(target);
      if (r.phase === "outcome" && r.status === "SUCCESS") outcomes.set(target, (outcomes.get(target) ?? 0) + 1);
    }
    checkUploads(cycle, facts, store, commits);
    checkRevocations(cycle, facts, store, revokes);
    checkPersonas(cycle, facts, store, personaOps);
    // 2. every acknowledged request has its outcome in the log, once.
    for (const key of facts.acked.keys()) {
      if (outcomes.get(key) !== 1)
        violate(cycle, `acknowledged write ${key} has ${outcomes.get(key) ?? 0} SUCCESS outcome records, not 1`);
    }
    // 3. storage holds exactly the acknowledged writes, none torn, none unsent, each with its intent record.
    const objects = store.db
      .prepare("SELECT path, data FROM objects WHERE workspace = 'chaos' AND path LIKE ?")
      .all(`c${cycle}/%`) as { path: string; data: Uint8Array }[];
    const present = new Map(objects.map((o) => [`obj://chaos/${o.path}`, o.data]));
    for (const [key, d] of facts.acked) {
      const data = present.get(key);
      if (!data) violate(cycle, `acknowledged write ${key} is missing from storage`);
      else if (digest(data) !== d) violate(cycle, `acknowledged write ${key} holds other bytes than acknowledged`);
    }
    for (const [key, data] of present) {
      totals.checkedObjects++;
      if (!intact(data)) violate(cycle, `object ${key} is torn (its checksum fails)`);
      if (!facts.sent.has(key)) violate(cycle, `object ${key} exists but its write was never sent`);
      if (!intents.has(key)) violate(cycle, `object ${key} exists without an audit intent record`);
      // Acknowledged or not: a write that took effect has its outcome on the record (a start writes
      // one the kill cut off), so the log never reads "did not finish" for an object that is there.
      else if (outcomes.get(key) !== 1)
        violate(cycle, `object ${key} exists with ${outcomes.get(key) ?? 0} SUCCESS outcome records, not 1`);
    }
  } finally {
    store.close();
  }
  // 6. an acknowledged revocation is in force after the restart: its token is refused (a few a cycle).
  for (const id of [...facts.revoked].slice(-3)) {
    const token = facts.minted.get(id) as Uint8Array;
    const holder = await KernelClient.connect({
      socket,
      identity: join(home, "admin.identity"),
      tokens: [token],
      reconnect: false,
    }).catch(() => undefined);
    if (!holder) continue; // refused at the handshake
    const used = await holder.call("system.health", "kernel://").then(
      () => true,
      () => false,
    );
    await holder.close().catch(() => {});
    if (used) violate(cycle, `token ${id}, revoked and acknowledged before the kill, was honoured after the restart`);
  }
  const c = await connect();
  // 5. acknowledged uploads read back whole.
  for (const [key, d] of facts.uploads) {
    const parts: Uint8Array[] = [];
    try {
      for await (const p of c.storage.readStream(key)) parts.push(p);
      if (digest(Buffer.concat(parts)) !== d) violate(cycle, `acknowledged upload ${key} reads back other bytes`);
    } catch (e) {
      violate(cycle, `acknowledged upload ${key} cannot be read after the restart: ${(e as Error).message}`);
    }
  }
  // 4. the ops that were running are failed, not running forever.
  for (const d of facts.deferred) {
    totals.deferredRunning++;
    const id = typeof d === "string" ? d : d.id;
    const st = await c.ops.status(d);
    if (st.state === "failed" && st.errorClass === "INTERNAL") totals.deferredFailed++;
    else violate(cycle, `DEFERRED op ${id} running at the kill is ${String(st.state)}/${String(st.errorClass)} after restart`);
  }
  await c.close();
}

/** 5. what uploads left: objects only from sent uploads, each with its commit's intent and one SUCCESS outcome; no partial file, no unnamed body. */
function checkUploads(cycle: number, facts: CycleFacts, store: SqliteStore, commits: AuditRow[]): void {
  const intents = new Set(commits.filter((r) => r.phase === "intent").map((r) => r.target as string));
  const outcomes = new Map<string, number>();
  for (const r of commits)
    if (r.phase === "outcome" && r.status === "SUCCESS")
      outcomes.set(r.target as string, (outcomes.get(r.target as string) ?? 0) + 1);
  for (const key of facts.uploads.keys())
    if (outcomes.get(key) !== 1)
      violate(cycle, `acknowledged upload ${key} has ${outcomes.get(key) ?? 0} SUCCESS outcome records, not 1`);
  const made = store.db
    .prepare("SELECT path, hash FROM objects WHERE workspace = 'chaos' AND path LIKE ?")
    .all(`u${cycle}/%`) as { path: string; hash: Uint8Array | null }[];
  for (const o of made) {
    const key = `obj://chaos/${o.path}`;
    totals.checkedObjects++;
    if (!facts.uploadsSent.has(key)) violate(cycle, `object ${key} exists but its upload never began`);
    if (!intents.has(key)) violate(cycle, `object ${key} exists without a storage.upload.commit intent record`);
    else if (outcomes.get(key) !== 1)
      violate(cycle, `object ${key} exists with ${outcomes.get(key) ?? 0} SUCCESS commit outcomes, not 1`);
  }
  const partial = readdirSync(join(home, "objects", "tmp")).filter((n) => !n.startsWith("gone-"));
  if (partial.length > 0)
    violate(cycle, `${partial.length} partial upload files left after the restart: ${partial.slice(0, 3).join(", ")}`);
  const named = new Set(
    (store.db.prepare("SELECT DISTINCT hash FROM objects WHERE hash IS NOT NULL").all() as { hash: Uint8Array }[]).map((r) =>
      Buffer.from(r.hash).toString("hex"),
    ),
  );
  const top = join(home, "objects", "sha256");
  for (const a of readdirSync(top))
    for (const b of readdirSync(join(top, a)))
      if (!named.has(a + b)) violate(cycle, `body ${a + b} is on disk with no object naming it after the restart`);
}

/** 6. every revocation in the store has its token.revoke SUCCESS outcome; every acknowledged mint and revocation is stored. */
function checkRevocations(cycle: number, facts: CycleFacts, store: SqliteStore, revokes: AuditRow[]): void {
  const recorded = new Set(revokes.filter((r) => r.phase === "outcome" && r.status === "SUCCESS").map((r) => r.target as string));
  for (const id of facts.minted.keys()) {
    const t = store.getToken(id);
    if (!t) violate(cycle, `acknowledged token.mint ${id} is not stored after the restart`);
    else if (t.revokedAt !== null && t.revokedAt !== undefined && !recorded.has(`token://${id}`))
      violate(cycle, `token ${id} is revoked in the store with no token.revoke SUCCESS outcome on the record`);
  }
  for (const id of facts.revoked) {
    totals.ackedRevocations++;
    const t = store.getToken(id);
    if (t?.revokedAt === null || t?.revokedAt === undefined)
      violate(cycle, `acknowledged revocation of ${id} is not in force after the restart`);
  }
}

/** 7. the registry holds exactly the acknowledged registrations and removals, each change on the record. */
function checkPersonas(cycle: number, facts: CycleFacts, store: SqliteStore, ops: AuditRow[]): void {
  const succeeded = (op: string) =>
    new Set(
      ops
        .filter((r) => r.op === op && r.phase === "outcome" && r.status === "SUCCESS")
        .map((r) => (r.target as string).slice(10)),
    );
  const registered = succeeded("persona.register");
  const removed = succeeded("persona.remove");
  for (const id of facts.personasSent) {
    const there = store.getPersona(id) !== undefined;
    if (facts.registered.has(id)) totals.ackedPersonaOps++;
    if (facts.removed.has(id)) {
      totals.ackedPersonaOps++;
      if (there) violate(cycle, `persona ${id}, whose removal was acknowledged, is registered after the restart`);
    } else if (facts.registered.has(id) && !facts.removalsSent.has(id) && !there)
      violate(cycle, `persona ${id}, whose registration was acknowledged, is missing after the restart`);
    if (there && !registered.has(id)) violate(cycle, `persona ${id} is registered with no persona.register SUCCESS outcome`);
    if (!there && registered.has(id) && !removed.has(id))
      violate(cycle, `persona ${id} was registered and is gone with no persona.remove SUCCESS outcome`);
  }
}

const started = Date.now();
try {
  await startKernel();
  for (let cycle = 1; cycle <= CYCLES; cycle++) {
    const facts: CycleFacts = {
      acked: new Map(),
      sent: new Set(),
      deferred: [],
      events: 0,
      uploads: new Map(),
      uploadsSent: new Set(),
      minted: new Map(),
      revoked: new Set(),
      personasSent: new Set(),
      registered: new Set(),
      removalsSent: new Set(),
      removed: new Set(),
    };
    const killAfter = 50 + Math.floor(rand() * 1200);
    let underway: () => void = () => {};
    const started = new Promise<void>((r) => {
      underway = r;
    });
    const loading = load(cycle, facts, () => underway());
    // A load that fails before it is underway is a failure of the run, not a kill to check.
    await Promise.race([started, loading.then(() => Promise.reject(new Error("the load ended before it was underway")))]);
    await new Promise((r) => setTimeout(r, killAfter));
    const k = kernel as ChildProcess;
    const exited = new Promise((r) => k.once("exit", r));
    k.kill("SIGKILL");
    await exited;
    await loading;
    await startKernel();
    if (INJECT_FAULT && cycle === 1) {
      const key = [...facts.acked.keys()][0] as string;
      const s = new SqliteStore(join(home, "kernel.db"));
      s.db.prepare("UPDATE objects SET data = ? WHERE workspace = 'chaos' AND path = ?").run(Buffer.alloc(64, 7), key.slice(12));
      s.close();
    }
    await check(cycle, facts);
    totals.cycles++;
    totals.ackedWrites += facts.acked.size;
    totals.events += facts.events;
    totals.ackedUploads += facts.uploads.size;
    const line = {
      cycle,
      killAfterMs: killAfter,
      acked: facts.acked.size,
      inFlightAtKill: facts.sent.size - facts.acked.size,
      deferred: facts.deferred.length,
      auditRecords: totals.auditRecords,
      violations: totals.violations,
    };
    if (JSON_OUT) console.log(JSON.stringify(line));
    else
      process.stderr.write(
        `chaos: cycle ${cycle}/${CYCLES} killed after ${killAfter} ms: ${line.acked} acknowledged writes, ${line.inFlightAtKill} in flight, audit ${line.auditRecords} records, ${totals.violations} violations\n`,
      );
  }
} finally {
  if (kernel && kernel.exitCode === null) {
    const k = kernel;
    const exited = new Promise((r) => k.once("exit", r));
    k.kill("SIGTERM");
    await exited;
  }
  rmSync(home, { recursive: true, force: true });
}
const summary = { seed: SEED, ...totals, seconds: Math.round((Date.now() - started) / 100) / 10, violationsList: violations };
if (JSON_OUT) console.log(JSON.stringify(summary));
else {
  console.log(
    `chaos seed=${SEED}: ${totals.cycles} SIGKILL cycles, ${totals.ackedWrites} acknowledged writes and ${totals.checkedObjects} objects checked, ` +
      `${totals.auditRecords} audit records verified, ${totals.deferredFailed} running DEFERRED ops reported failed, ${totals.violations} violations (${summary.seconds}s)`,
  );
  for (const v of violations) console.log(`VIOLATION ${v}`);
}
process.exit(totals.violations ? 1 : 0);
