/**
 * `npm run abuse -- [--seconds N] [--only a,b] [--max-rss-mb M] [--json]`
 *
 * The noisy-neighbour check of issue #15: each attack in turn against a real kernel (its own
 * process, a fresh temp home, default settings) while a legitimate persona keeps calling
 * `system.health` on its session and opens a fresh session every half second. Reports the
 * legitimate persona's p50/p99 and the kernel's peak RSS, log and database growth per attack,
 * with a quiet baseline first. Fails (exit 1) if the kernel dies, a legitimate call or connect
 * fails, the kernel's RSS passes --max-rss-mb, or an attack's own check fails.
 */
import type { Attack, AttackResult } from "./attack.js";
import { ATTACKS } from "./attacks.js";
import { KernelProcess } from "./kernel-process.js";

const argv = process.argv.slice(2);
const opt = (name: string) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
};
const SECONDS = Number(opt("seconds") ?? 10);
const MAX_RSS_MB = Number(opt("max-rss-mb") ?? 600);
const JSON_OUT = argv.includes("--json");
const only = opt("only")?.split(",").filter(Boolean);
if (!(SECONDS > 0) || !(MAX_RSS_MB > 0)) {
  console.error("--seconds and --max-rss-mb must be positive numbers");
  process.exit(2);
}
const unknown = only?.filter((n) => !ATTACKS.some((a) => a.name === n)) ?? [];
if (unknown.length) {
  console.error(`unknown attack(s): ${unknown.join(", ")}; known: ${ATTACKS.map((a) => a.name).join(", ")}`);
  process.exit(2);
}
const chosen = only ? ATTACKS.filter((a) => only.includes(a.name)) : ATTACKS;

interface Row {
  attack: string;
  finding: number | null;
  legitCalls: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  connects: number;
  rssStartMb: number;
  rssPeakMb: number;
  logKb: number;
  dbGrowthMb: number;
  note: string;
  failures: string[];
}

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
};
const round = (x: number) => Math.round(x * 100) / 100;
const CALL_TIMEOUT_MS = 10_000;

/** Rejects after `ms` (a call the kernel never answers is a failure, not a hang). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<T>((_, reject) => {
      t = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    }),
  ]);
}

/** One phase: a fresh kernel, the attack (or nothing) and the legitimate persona side by side. */
async function phase(attack: Attack | undefined): Promise<Row> {
  const k = new KernelProcess();
  const failures: string[] = [];
  const lat: number[] = [];
  let connects = 0;
  let result: AttackResult = { note: "", ok: true };
  try {
    await k.start();
    const legit = await k.persona("legit", [{ ops: ["system.health"], targets: ["kernel://"] }]);
    const c = await legit.connect();
    const rssStart = k.rss();
    const dbStart = k.dbBytes();
    const logStart = k.logBytes;
    let rssPeak = rssStart;
    const ac = new AbortController();
    const sampler = setInterval(() => {
      rssPeak = Math.max(rssPeak, k.rss());
    }, 100);
    const running = attack
      ? attack.run(k.context(ac.signal)).catch((e: Error): AttackResult => ({ note: `attack error: ${e.message}`, ok: false }))
      : Promise.resolve(result);
    const end = Date.now() + SECONDS * 1000;
    const calls = (async () => {
      while (Date.now() < end && !k.exit) {
        const t0 = performance.now();
        try {
          await within(c.system.health(), CALL_TIMEOUT_MS, "system.health");
          lat.push(performance.now() - t0);
        } catch (e) {
          failures.push(`system.health: ${(e as Error).message}`);
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    const sessions = (async () => {
      while (Date.now() < end && !k.exit) {
        await new Promise((r) => setTimeout(r, 500));
        try {
          const fresh = await within(legit.connect(), CALL_TIMEOUT_MS, "connect");
          await within(fresh.system.health(), CALL_TIMEOUT_MS, "system.health on a fresh session");
          await fresh.close();
          connects++;
        } catch (e) {
          failures.push(`connect: ${(e as Error).message}`);
        }
      }
    })();
    await Promise.all([calls, sessions]);
    ac.abort();
    result = await within(running, 30_000, "the attack's end").catch((e: Error) => ({ note: e.message, ok: false }));
    clearInterval(sampler);
    rssPeak = Math.max(rssPeak, k.rss());
    if (k.exit) failures.push(k.exit);
    if (rssPeak > MAX_RSS_MB * 1024 * 1024) failures.push(`kernel RSS ${Math.round(rssPeak / 2 ** 20)} MB > ${MAX_RSS_MB} MB`);
    if (!result.ok) failures.push(`attack check: ${result.note}`);
    await c.close().catch(() => {});
    return {
      attack: attack?.name ?? "quiet",
      finding: attack?.finding ?? null,
      legitCalls: lat.length,
      p50Ms: round(pct(lat, 50)),
      p99Ms: round(pct(lat, 99)),
      maxMs: round(lat.length ? Math.max(...lat) : Number.NaN),
      connects,
      rssStartMb: Math.round(rssStart / 2 ** 20),
      rssPeakMb: Math.round(rssPeak / 2 ** 20),
      logKb: Math.round((k.logBytes - logStart) / 1024),
      dbGrowthMb: round((k.dbBytes() - dbStart) / 2 ** 20),
      note: result.note,
      failures: [...new Set(failures)].slice(0, 5),
    };
  } catch (e) {
    return {
      attack: attack?.name ?? "quiet",
      finding: attack?.finding ?? null,
      legitCalls: lat.length,
      p50Ms: Number.NaN,
      p99Ms: Number.NaN,
      maxMs: Number.NaN,
      connects,
      rssStartMb: 0,
      rssPeakMb: 0,
      logKb: 0,
      dbGrowthMb: 0,
      note: "",
      failures: [`setup: ${(e as Error).message}`, ...(k.exit ? [k.exit] : [])],
    };
  } finally {
    await k.stop();
  }
}

const rows: Row[] = [];
for (const a of [undefined, ...chosen]) {
  const r = await phase(a);
  rows.push(r);
  if (!JSON_OUT) {
    const f = r.failures.length ? `  FAIL: ${r.failures.join("; ")}` : "";
    console.log(
      `${r.attack.padEnd(18)} p50 ${String(r.p50Ms).padStart(7)} ms  p99 ${String(r.p99Ms).padStart(7)} ms  max ${String(r.maxMs).padStart(7)} ms  calls ${String(r.legitCalls).padStart(5)}  connects ${String(r.connects).padStart(3)}  rss ${r.rssStartMb}→${r.rssPeakMb} MB  log ${r.logKb} KB  db +${r.dbGrowthMb} MB  ${r.note}${f}`,
    );
  }
}
const quiet = rows[0] as Row;
const failed = rows.filter((r) => r.failures.length > 0);
const over3x = rows.filter((r) => r !== quiet && r.p99Ms > 3 * quiet.p99Ms).map((r) => r.attack);
if (JSON_OUT) console.log(JSON.stringify({ seconds: SECONDS, maxRssMb: MAX_RSS_MB, rows, over3x, failed: failed.length }));
else {
  console.log(`p99 over 3× the quiet p99 (${quiet.p99Ms} ms): ${over3x.join(", ") || "none"}`);
  console.log(failed.length ? `FAILED: ${failed.map((r) => r.attack).join(", ")}` : "all phases passed");
}
// Exit explicitly in case an attack left a socket behind.
process.exit(failed.length ? 1 : 0);
