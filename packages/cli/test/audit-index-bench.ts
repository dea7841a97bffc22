/**
 * `node packages/cli/dist/test/audit-index-bench.js [--records N] [--keep DIR]`: the time of
 * `kpip audit timeline --persona X`, `query --persona X`, `timeline --summary`, `timeline --trace T`
 * and `timeline [--summary] --session S` (S in one chunk of the index) on a home of N
 * records (default 500,000: reads, writes as intent + outcome, refusals; persona X is 0.5% of
 * them), each by the full scan (--no-index), with the side index built first (cold) and with it
 * built (warm), then warm again after 5,000 more records (the index decodes only those). Each a
 * process of its own, as a person runs it. One JSON line per run. Not part of the suite.
 */
import { spawnSync } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { AuditLog, SqliteStore } from "@kpip/kernel";

type AuditEntry = Parameters<AuditLog["append"]>[0];

const arg = (name: string) => {
  const at = process.argv.indexOf(name);
  return at >= 0 ? process.argv[at + 1] : undefined;
};
const records = Number(arg("--records") ?? 500_000);
const keep = arg("--keep");
const MAIN = fileURLToPath(new URL("../src/main.js", import.meta.url));

const dir = keep ?? mkdtempSync(join(tmpdir(), "kpip-index-bench-"));
const home = join(dir, "home");
const cache = join(dir, "cache");

/** Record i's traceparent: a trace id of its own (its first 8 digits a hash of i, the rest fixed). */
const traceparent = (i: number) =>
  `00-${(Math.imul(i, 0x9e3779b1) >>> 0).toString(16).padStart(8, "0")}0af7651916cd43dd8448eb21-b7ad6b7169203331-01`;

function entry(i: number): AuditEntry {
  const k = i % 10;
  // An outcome (k = 7) is its intent's persona's, in its session.
  const who = k === 7 ? i - 1 : i;
  const persona = who % 200 === 7 || who % 200 === 6 ? "mallory" : `p${who % 20}`;
  const session = `sess-${persona}-${Math.floor(who / 5000)}`;
  if (k < 6)
    return {
      session,
      persona,
      phase: "complete",
      requestId: i,
      op: k < 3 ? "storage.read" : "bus.publish",
      target: `obj://ws${i % 50}/f${i}`,
      caps: "h1:0123456789abcdef0123456789abcdef",
      status: "SUCCESS",
      durationUs: 40 + (i % 50),
      traceparent: traceparent(i),
    };
  if (k === 9)
    return {
      session,
      persona,
      phase: "refused",
      requestId: i,
      op: "storage.write",
      target: `obj://other/f${i}`,
      status: "FAILURE",
      errorClass: "CAPABILITY",
      message: "no capability allows it",
    };
  // Intent at k = 6, its outcome at k = 7 (k = 8 its outcome too late: the intent of k = 6 waits a record).
  if (k === 8) return { ...entry(i - 2), requestId: i, phase: "complete", status: "SUCCESS" };
  const write = k === 6 ? i : i - 1;
  const ih = Buffer.alloc(32, write % 251);
  return k === 7
    ? {
        session,
        persona,
        phase: "outcome",
        requestId: write,
        op: "storage.write",
        target: `obj://ws${write % 50}/f${write}`,
        intentHash: ih,
        status: "SUCCESS",
        durationUs: 900,
      }
    : {
        session,
        persona,
        phase: "intent",
        requestId: write,
        op: "storage.write",
        target: `obj://ws${write % 50}/f${write}`,
        intentHash: ih,
        intent: randomBytes(64),
        caps: "h1:0123456789abcdef0123456789abcdef",
      };
}

async function fill(from: number, n: number): Promise<void> {
  const store = new SqliteStore(join(home, "kernel.db"));
  store.useAuditSegments(join(home, "audit"));
  const log = new AuditLog(store, "k-bench", generateKeyPairSync("ed25519").privateKey, {
    batchMax: 512,
    checkpointEvery: 10_000,
  });
  let last: Promise<void> = Promise.resolve();
  for (let i = from; i < from + n; i++) {
    last = log.append(entry(i));
    if (i % 5000 === 0) await last;
  }
  await last;
  log.close();
  store.close();
}

function run(label: string, args: string[]): void {
  const t = process.hrtime.bigint();
  // CPU seconds of the command too (GNU time's user + system on the last line of stderr): the wall time of a busy machine is not the command's.
  const r = spawnSync("/usr/bin/time", ["-f", "%U %S", process.execPath, MAIN, "audit", ...args, "--home", home], {
    encoding: "utf8",
    maxBuffer: 1 << 28,
  });
  const secs = Number(process.hrtime.bigint() - t) / 1e9;
  if (r.status !== 0) throw new Error(`${args.join(" ")}: ${r.stderr}`);
  const [user, sys] = (r.stderr.trim().split("\n").at(-1) ?? "").split(" ").map(Number);
  const cpu = (user ?? Number.NaN) + (sys ?? Number.NaN);
  const round = (x: number) => Math.round(x * 100) / 100;
  process.stdout.write(
    `${JSON.stringify({ records, run: label, cmd: args.join(" "), secs: round(secs), cpuSecs: round(cpu) })}\n`,
  );
}

try {
  if (!existsSync(home)) {
    mkdirSync(home, { recursive: true });
    const t = Date.now();
    await fill(1, records);
    process.stderr.write(`filled ${records} records in ${((Date.now() - t) / 1000).toFixed(1)} s\n`);
  }
  const cmds = [
    ["timeline", "--persona", "mallory", "--limit", "100"],
    ["query", "--persona", "mallory", "--limit", "100"],
    ["timeline", "--summary"],
    // One request's rows by its trace id (record 12345's); a session of 5,000 records in one chunk (chunk summaries skip the other seven).
    ["timeline", "--trace", traceparent(12345).slice(3, 35)],
    ["timeline", "--session", "sess-mallory-42", "--limit", "100"],
    ["timeline", "--summary", "--session", "sess-mallory-42"],
  ];
  for (const c of cmds) {
    run("scan", [...c, "--no-index"]);
    rmSync(cache, { recursive: true, force: true });
    run("index cold", [...c, "--index-dir", cache]);
    run("index warm", [...c, "--index-dir", cache]);
  }
  await fill(records + 1, 5000);
  for (const c of cmds) run("index warm, 5000 appended since", [...c, "--index-dir", cache]);
} finally {
  if (!keep) rmSync(dir, { recursive: true, force: true });
}
