/**
 * `npm run load -- [--sessions N] [--seconds S] [--personas P] [--max-rss-mb M] [--json] [--kernel-cpu-prof DIR]`
 *
 * Load: N concurrent sessions (default 1,000) spread over P personas, each running a mix of
 * operations with think time for S seconds (default 60) against a kernel in its own process.
 * Every operation is one the persona is granted, so any error is unexpected and fails the run
 * (exit 1), as does a kernel RSS over the bound or a kernel that dies. Reports throughput,
 * latency percentiles per op and overall, and the kernel's RSS over the run. `--kernel-cpu-prof`
 * writes the kernel's V8 CPU profile into DIR when it stops (to find what stalls the tail). A run
 * of ten minutes or more is the soak: its RSS at the end of each minute says whether it keeps growing.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { KernelClient as KC, type KernelClient, loadIdentity } from "@kpip/client";
import { outputIncludes } from "@kpip/protocol/testing";
import { rssMb } from "./proc.js";

const argv = process.argv.slice(2);
const int = (name: string, dflt: number) => {
  const i = argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(argv[i + 1]) : dflt;
  if (!Number.isSafeInteger(v) || v <= 0) {
    console.error(`--${name} must be a positive integer`);
    process.exit(2);
  }
  return v;
};
const SESSIONS = int("sessions", 1000);
const SECONDS = int("seconds", 60);
const PERSONAS = Math.min(int("personas", 10), SESSIONS);
const MAX_RSS_MB = int("max-rss-mb", 600);
const JSON_OUT = argv.includes("--json");
const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));
const profAt = argv.indexOf("--kernel-cpu-prof");
const PROF = profAt >= 0 ? [`--cpu-prof`, `--cpu-prof-dir=${argv[profAt + 1]}`] : [];

const home = mkdtempSync(join(tmpdir(), "kpip-load-"));
const socket = join(home, "kernel.sock");
const kernel: ChildProcess = spawn(
  process.execPath,
  [...PROF, MAIN, "kernel", "--home", home, "--log-level", "silent", "--max-sessions", String(SESSIONS + 16)],
  { stdio: ["ignore", "pipe", "inherit"] },
);
let kernelExit: string | undefined;
kernel.once("exit", (code, signal) => {
  kernelExit = `kernel exited (code ${code}, signal ${signal})`;
});
await outputIncludes(kernel, "is running");
const kernelRssMb = (): number => rssMb(kernel.pid);

const admin = await KC.connect({
  socket,
  identity: join(home, "admin.identity"),
  tokens: [readFileSync(join(home, "admin.token"), "utf8")],
  reconnect: false,
});
const personas: { id: string; identity: ReturnType<typeof loadIdentity>; token: Uint8Array }[] = [];
for (let p = 0; p < PERSONAS; p++) {
  const id = `load${p}`;
  const r = spawnSync(process.execPath, [MAIN, "persona", "create", id, "--home", home, "--json"], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(r.stderr);
  const identity = loadIdentity((JSON.parse(r.stdout) as { identity: string }).identity);
  const { token } = await admin.tokens.mint(id, {
    rights: [
      { ops: ["storage.*"], targets: [`obj://${id}/**`, `obj://${id}`] },
      { ops: ["event.*"], targets: [`topic://${id}/**`] },
      { ops: ["system.health", "system.info"], targets: ["kernel://"] },
      { ops: ["resource.query"], targets: [`persona://${id}`] },
    ],
    ttlMs: 6 * 3_600_000,
  });
  personas.push({ id, identity, token });
}

const lat = new Map<string, number[]>();
const errors = new Map<string, number>();
let done = 0;
let running = true;
const record = (op: string, us: number) => {
  const a = lat.get(op) ?? [];
  if (a.length === 0) lat.set(op, a);
  a.push(us);
  done++;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One session's life: connect, then a mixed workload with think time until the run ends. */
async function session(n: number): Promise<void> {
  const p = personas[n % personas.length] as (typeof personas)[number];
  let c: KernelClient;
  const t0 = process.hrtime.bigint();
  try {
    c = await KC.connect({ socket, identity: p.identity, tokens: [p.token], reconnect: false });
  } catch (e) {
    // The message, not only the class: "why" is what a failed load run is read for.
    const key = `connect: ${(e as Error).name}: ${(e as Error).message.replace(/\d+/g, "N")}`;
    errors.set(key, (errors.get(key) ?? 0) + 1);
    return;
  }
  record("connect", Number(process.hrtime.bigint() - t0) / 1000);
  const sub = n % 10 === 0 ? await c.events.subscribe(`topic://${p.id}/**`) : undefined;
  const drain = sub
    ? (async () => {
        for await (const _ of sub) if (!running) break;
      })()
    : undefined;
  let i = 0;
  const written = new Set<number>();
  while (running && !kernelExit) {
    const key = `obj://${p.id}/s${n}/k${i % 20}`;
    const r = Math.random();
    const op =
      r < 0.3
        ? "storage.write"
        : r < 0.6
          ? "storage.read"
          : r < 0.75
            ? "event.emit"
            : r < 0.85
              ? "storage.list"
              : r < 0.95
                ? "system.health"
                : "resource.query";
    const t = process.hrtime.bigint();
    try {
      if (op === "storage.write") {
        await c.storage.write(key, Buffer.from(`v${i}-${n}`));
        written.add(i % 20);
      } else if (op === "storage.read") {
        // Only keys this session wrote: a missing object would be a real error.
        const k = [...written][Math.floor(Math.random() * written.size)];
        if (k === undefined) await c.system.health();
        else await c.storage.read(`obj://${p.id}/s${n}/k${k}`);
      } else if (op === "event.emit") await c.events.emit(`topic://${p.id}/e${n % 7}`, { n, i });
      else if (op === "storage.list") await c.call("storage.list", `obj://${p.id}/s${n}`, { limit: 10 });
      else if (op === "system.health") await c.system.health();
      else await c.call("resource.query", `persona://${p.id}`);
      record(op, Number(process.hrtime.bigint() - t) / 1000);
    } catch (e) {
      // Grouped by op, class and message shape (numbers elided) so a systematic error is one line.
      const k = `${op}: ${(e as { errorClass?: string }).errorClass ?? (e as Error).name}: ${(e as Error).message.replace(/\d+/g, "N")}`;
      errors.set(k, (errors.get(k) ?? 0) + 1);
    }
    i++;
    await sleep(50 + Math.random() * 400);
  }
  await c.close().catch(() => {});
  await drain?.catch(() => {});
}

const started = Date.now();
// The generator's own event-loop delay: 200 sessions share this one loop, so a late timer or
// callback here shows in every latency measured. Reported beside them, to tell whose tail it is.
const loopDelay = monitorEventLoopDelay({ resolution: 1 });
loopDelay.enable();
const rssStart = kernelRssMb();
let rssMax = rssStart;
/** The kernel's RSS at the end of each full minute: a soak's answer to "does it keep growing?". */
const rssByMinute: number[] = [];
const sampler = setInterval(() => {
  const r = kernelRssMb();
  rssMax = Math.max(rssMax, r);
  if (Math.floor((Date.now() - started) / 60_000) > rssByMinute.length) rssByMinute.push(Math.round(r));
  if (!JSON_OUT) {
    const secs = (Date.now() - started) / 1000;
    process.stderr.write(
      `\rload: ${secs.toFixed(0)}/${SECONDS}s, ${done} ops, ${[...errors.values()].reduce((a, b) => a + b, 0)} errors, kernel rss ${r.toFixed(0)} MB   `,
    );
  }
}, 1000);
// Open sessions in waves so the connect storm itself is part of the load, not a thundering herd.
const sessions: Promise<void>[] = [];
for (let n = 0; n < SESSIONS; n++) {
  sessions.push(session(n));
  if (n % 50 === 49) await sleep(20);
}
await sleep(Math.max(0, SECONDS * 1000 - (Date.now() - started)));
const rssAtEnd = kernelRssMb();
running = false;
await Promise.all(sessions);
clearInterval(sampler);
loopDelay.disable();
if (!JSON_OUT) process.stderr.write("\n");
const secs = (Date.now() - started) / 1000;

const pct = (a: number[], p: number) => a[Math.min(a.length - 1, Math.floor(p * a.length))] ?? 0;
const all: number[] = [];
const perOp: Record<string, { count: number; p50_us: number; p99_us: number; p999_us: number }> = {};
for (const [op, a] of lat) {
  a.sort((x, y) => x - y);
  perOp[op] = {
    count: a.length,
    p50_us: Math.round(pct(a, 0.5)),
    p99_us: Math.round(pct(a, 0.99)),
    p999_us: Math.round(pct(a, 0.999)),
  };
  // Not push(...a): a ten-minute run's 400,000 latencies overflow the call stack as arguments.
  if (op !== "connect") for (const x of a) all.push(x);
}
all.sort((x, y) => x - y);
await admin.close().catch(() => {});
const failures: string[] = [];
if (kernelExit) failures.push(kernelExit);
for (const [k, v] of errors) failures.push(`${v}× ${k}`);
if (rssMax > MAX_RSS_MB) failures.push(`kernel RSS ${rssMax.toFixed(0)} MB over the bound ${MAX_RSS_MB} MB`);
if ((perOp.connect?.count ?? 0) !== SESSIONS)
  failures.push(`only ${perOp.connect?.count ?? 0} of ${SESSIONS} sessions connected`);
if (!kernelExit) {
  kernel.kill("SIGTERM");
  const code = await new Promise<number | null>((r) => kernel.once("exit", (c) => r(c)));
  if (code !== 0) failures.push(`kernel exited ${code} on SIGTERM`);
}
rmSync(home, { recursive: true, force: true });

const summary = {
  sessions: SESSIONS,
  personas: PERSONAS,
  seconds: Math.round(secs),
  ops: all.length,
  opsPerSecond: Math.round(all.length / secs),
  p50_us: Math.round(pct(all, 0.5)),
  p99_us: Math.round(pct(all, 0.99)),
  p999_us: Math.round(pct(all, 0.999)),
  rssStartMb: Math.round(rssStart),
  rssMaxMb: Math.round(rssMax),
  rssEndOfLoadMb: Math.round(rssAtEnd),
  rssByMinuteMb: rssByMinute,
  generatorLoopDelayMs: {
    p50: +(loopDelay.percentile(50) / 1e6).toFixed(2),
    p99: +(loopDelay.percentile(99) / 1e6).toFixed(2),
    p999: +(loopDelay.percentile(99.9) / 1e6).toFixed(2),
    max: +(loopDelay.max / 1e6).toFixed(2),
  },
  perOp,
  failures,
};
if (JSON_OUT) console.log(JSON.stringify(summary));
else {
  console.log(
    `load: ${SESSIONS} sessions (${PERSONAS} personas) for ${summary.seconds}s: ${summary.ops} ops, ${summary.opsPerSecond} ops/s, ` +
      `p50 ${summary.p50_us} µs, p99 ${summary.p99_us} µs, p99.9 ${summary.p999_us} µs; kernel rss ${summary.rssStartMb}→${summary.rssMaxMb} MB` +
      (rssByMinute.length ? `; by minute ${rssByMinute.join(", ")} MB` : "") +
      `\n  the generator's own event-loop delay: p50 ${summary.generatorLoopDelayMs.p50} ms, p99 ${summary.generatorLoopDelayMs.p99} ms, p99.9 ${summary.generatorLoopDelayMs.p999} ms, max ${summary.generatorLoopDelayMs.max} ms`,
  );
  for (const [op, s] of Object.entries(perOp)) {
    console.log(
      `  ${op.padEnd(15)} ${String(s.count).padStart(8)}  p50 ${s.p50_us} µs  p99 ${s.p99_us} µs  p99.9 ${s.p999_us} µs`,
    );
  }
  for (const f of failures) console.log(`FAIL ${f}`);
}
process.exit(failures.length ? 1 : 0);
