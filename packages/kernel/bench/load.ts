/**
 * `npm run load -- [--sessions N] [--seconds S] [--min-ops N] [--personas P] [--generators G] [--max-rss-mb M] [--json] [--kernel-cpu-prof DIR] [--kernel-trace-gc] [--kernel-flag F]… [--kernel-probe] [--kernel-rt]`
 *
 * Load: N concurrent sessions (default 1,000) spread over P personas, each running a mix of
 * operations with think time for S seconds (default 60) against a kernel in its own process.
 * The sessions run on G generators (child processes, default one per 50 sessions, at most 4), so
 * no one event loop carries them all; the generators' loop delay is reported (the worst
 * generator's), beside what the kernel itself saw of each request (its request-duration series
 * and its audit records' durationUs), its GC pauses and its own loop delay.
 * Every operation is one the persona is granted, so any error is unexpected and fails the run
 * (exit 1), as does a kernel RSS over the bound or a kernel that dies. Reports throughput,
 * latency percentiles per op and overall, and the kernel's RSS over the run. `--kernel-cpu-prof`
 * writes the kernel's V8 CPU profile into DIR when it stops, `--kernel-trace-gc` prints its GC
 * events to stderr (to find what stalls the tail), `--kernel-flag F` passes a node flag to the
 * kernel, and `--kernel-probe` times every request in the kernel from arrival to answer and splits
 * off the time the kernel's thread waited for a CPU (bench/load-probe.ts): the kernel's own share
 * of the tail, on a machine that is not quiet. `--kernel-rt` starts the kernel under `chrt -f 10`
 * (SCHED_FIFO, every thread of it): a diagnostic, so neighbours' builds on a shared machine
 * do not preempt it and what is left of the tail is the kernel's (the generators stay as they are). A run
 * of ten minutes or more is the soak: its RSS at the end of each minute says whether it keeps growing.
 */
import { type ChildProcess, fork, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { KernelClient as KC } from "@kpip/client";
import { outputIncludes } from "@kpip/protocol/testing";
import { auditDurations, freePort, kernelSeries, loadProbeSummary, scrape } from "./load-kernel.js";
import type { GeneratorInput, GeneratorMessage } from "./load-worker.js";
import { pct, rssMb, serverEnv } from "./proc.js";

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
/** The run goes on past SECONDS until this many ops were done (a test's floor that a busy machine must not fail). */
const MIN_OPS = int("min-ops", 0);
const PERSONAS = Math.min(int("personas", 10), SESSIONS);
const GENERATORS = Math.min(int("generators", Math.min(4, Math.ceil(SESSIONS / 50))), SESSIONS);
const MAX_RSS_MB = int("max-rss-mb", 600);
const JSON_OUT = argv.includes("--json");
const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));
const profAt = argv.indexOf("--kernel-cpu-prof");
const PROF = profAt >= 0 ? [`--cpu-prof`, `--cpu-prof-dir=${argv[profAt + 1]}`] : [];
if (argv.includes("--kernel-trace-gc")) PROF.push("--trace-gc");
// Any other node flag for the kernel process (repeatable), e.g. --kernel-flag --cpu-prof-interval=250.
argv.forEach((a, i) => {
  if (a === "--kernel-flag" && argv[i + 1]) PROF.push(argv[i + 1] as string);
});

const home = mkdtempSync(join(tmpdir(), "kpip-load-"));
const socket = join(home, "kernel.sock");
// Outside the home, which goes before the summary is read.
const probeFile = argv.includes("--kernel-probe") ? `${home}.probe.json` : undefined;
if (probeFile) PROF.push(`--import=${new URL("./load-probe.js", import.meta.url).href}`);
// The kernel serves its Prometheus series on loopback: its own view of each request's latency.
const metricsAt = `127.0.0.1:${await freePort()}`;
const metricsUrl = `http://${metricsAt}/metrics`;
const RT = argv.includes("--kernel-rt") ? ["chrt", "-f", "10"] : [];
const kernel: ChildProcess = spawn(
  RT[0] ?? process.execPath,
  [
    ...RT.slice(1),
    ...(RT.length ? [process.execPath] : []),
    ...PROF,
    MAIN,
    "kernel",
    "--home",
    home,
    "--log-level",
    "silent",
    "--max-sessions",
    String(SESSIONS + 16),
    "--metrics-listen",
    metricsAt,
  ],
  { stdio: ["ignore", "pipe", "inherit"], env: probeFile ? { ...serverEnv(), KPIP_LOAD_PROBE_OUT: probeFile } : serverEnv() },
);
const generators: ChildProcess[] = [];
// However the run ends (a throw in the setup included), the kernel, the generators and the home go with it.
process.once("exit", () => {
  for (const w of generators) if (w.exitCode === null && w.signalCode === null) w.kill("SIGKILL");
  if (kernel.exitCode === null && kernel.signalCode === null) kernel.kill("SIGKILL");
  rmSync(home, { recursive: true, force: true });
  if (probeFile) rmSync(probeFile, { force: true });
});
// A signal (a test's spawn timeout) ends the run through "exit" too, so the cleanup above runs.
for (const sig of ["SIGTERM", "SIGINT"] as const) process.once(sig, () => process.exit(1));
let kernelExit: string | undefined;
kernel.once("exit", (code, signal) => {
  kernelExit = `kernel exited (code ${code}, signal ${signal})`;
});
await outputIncludes(kernel, "is running");
// Read on, so a kernel that prints (--trace-gc does, to stdout) never blocks on a full pipe.
if (argv.includes("--kernel-trace-gc")) kernel.stdout?.pipe(process.stderr);
else kernel.stdout?.resume();
const kernelRssMb = (): number => rssMb(kernel.pid);

// The personas first, with the CLI (spawnSync blocks this process): a client connected meanwhile
// would answer no heartbeat, and on a busy machine the kernel closed it as a dead peer.
const created: { id: string; identityPath: string }[] = [];
for (let p = 0; p < PERSONAS; p++) {
  const id = `load${p}`;
  const r = spawnSync(process.execPath, [MAIN, "persona", "create", id, "--home", home, "--json"], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(r.stderr);
  created.push({ id, identityPath: (JSON.parse(r.stdout) as { identity: string }).identity });
}
const admin = await KC.connect({
  socket,
  identity: join(home, "admin.identity"),
  tokens: [readFileSync(join(home, "admin.token"), "utf8")],
  reconnect: false,
});
const personas: GeneratorInput["personas"] = [];
for (const { id, identityPath } of created) {
  const { token } = await admin.tokens.mint(id, {
    rights: [
      { ops: ["storage.*"], targets: [`obj://${id}/**`, `obj://${id}`] },
      { ops: ["event.*"], targets: [`topic://${id}/**`] },
      { ops: ["system.health", "system.info"], targets: ["kernel://"] },
      { ops: ["resource.query"], targets: [`persona://${id}`] },
    ],
    ttlMs: 6 * 3_600_000,
  });
  personas.push({ id, identityPath, token });
}
// From here on, the records and series are the load's (the setup's are before).
const status = (await admin.call("system.status", "kernel://")).payload as { audit: { head: number } };
const auditFrom = status.audit.head + 1;
const seriesStart = await scrape(metricsUrl);

const started = Date.now();
// The generators: child processes, each with its share of the sessions on its own event loop.
const workerFile = fileURLToPath(new URL("./load-worker.js", import.meta.url));
const doneBy: number[] = [];
const results: Promise<Extract<GeneratorMessage, { kind: "result" }>>[] = [];
for (let g = 0; g < GENERATORS; g++) {
  const input: GeneratorInput = {
    socket,
    sessions: Array.from({ length: SESSIONS }, (_, n) => n).filter((n) => n % GENERATORS === g),
    personas,
  };
  const w = fork(workerFile, [], { serialization: "advanced", stdio: ["ignore", "inherit", "inherit", "ipc"] });
  w.send(input);
  generators.push(w);
  doneBy.push(0);
  results.push(
    new Promise((resolve, reject) => {
      w.on("message", (m: GeneratorMessage) => {
        if (m.kind === "progress") doneBy[g] = m.done;
        else resolve(m);
      });
      w.once("error", reject);
      w.once("exit", (code, signal) => reject(new Error(`generator ${g} exited (${code ?? signal}) before its result`)));
    }),
  );
}
const stopGenerators = () => {
  for (const w of generators) if (w.connected) w.send("stop");
};
kernel.once("exit", stopGenerators);
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
      `\rload: ${secs.toFixed(0)}/${SECONDS}s, ${doneBy.reduce((a, b) => a + b, 0)} ops, kernel rss ${r.toFixed(0)} MB   `,
    );
  }
}, 1000);
await new Promise<void>((r) => {
  let timeUp = false;
  const enough = () => doneBy.reduce((a, b) => a + b, 0) >= MIN_OPS;
  // The generators report their counts once a second: checked then, not guessed.
  const check = setInterval(() => {
    if (timeUp && enough()) finish();
  }, 250);
  const t = setTimeout(() => {
    timeUp = true;
    if (enough()) finish();
  }, SECONDS * 1000);
  const finish = () => {
    clearTimeout(t);
    clearInterval(check);
    r();
  };
  kernel.once("exit", finish);
});
const rssAtEnd = kernelRssMb();
stopGenerators();
// A generator that died is a failure of the run, reported with the others (the kernel still stops);
// one that hangs after "stop" is killed, which fails its result instead of hanging the run.
const hung = setTimeout(() => {
  for (const w of generators) w.kill("SIGKILL");
}, 60_000);
const settled = await Promise.allSettled(results);
clearTimeout(hung);
// Read once the generators are done: every op they measured has been answered, so the kernel's
// count covers them (read before, the ops answered after the read were the generators' only).
const seriesEnd = kernelExit ? undefined : await scrape(metricsUrl);
const generatorErrors = settled.flatMap((r) => (r.status === "rejected" ? [`${(r.reason as Error).message}`] : []));
const done = settled.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
clearInterval(sampler);
if (!JSON_OUT) process.stderr.write("\n");
const secs = (Date.now() - started) / 1000;

// Every generator's latencies, merged: the percentiles below are over all of them, exactly.
const lat = new Map<string, number[]>();
const errors = new Map<string, number>();
for (const r of done) {
  for (const [op, a] of Object.entries(r.lat)) {
    const to = lat.get(op) ?? [];
    lat.set(op, to);
    for (const x of a) to.push(x);
  }
  for (const [k, v] of r.errors) errors.set(k, (errors.get(k) ?? 0) + v);
}
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
const diedEarly = kernelExit !== undefined;
const failures: string[] = [];
if (kernelExit) failures.push(kernelExit);
failures.push(...generatorErrors);
for (const [k, v] of errors) failures.push(`${v}× ${k}`);
if (rssMax > MAX_RSS_MB) failures.push(`kernel RSS ${rssMax.toFixed(0)} MB over the bound ${MAX_RSS_MB} MB`);
if ((perOp.connect?.count ?? 0) !== SESSIONS)
  failures.push(`only ${perOp.connect?.count ?? 0} of ${SESSIONS} sessions connected`);
if (!kernelExit) {
  kernel.kill("SIGTERM");
  const code = await new Promise<number | null>((r) => kernel.once("exit", (c) => r(c)));
  if (code !== 0) failures.push(`kernel exited ${code} on SIGTERM`);
}
const series = seriesEnd && kernelSeries(seriesStart, seriesEnd);
const audited = diedEarly ? undefined : auditDurations(home, auditFrom, "load");
rmSync(home, { recursive: true, force: true });
const probe = probeFile && !diedEarly ? loadProbeSummary(probeFile, started) : undefined;
const worst = (i: number) => +(Math.max(0, ...done.map((r) => r.loopDelayNs[i] as number)) / 1e6).toFixed(2);

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
    p50: worst(0),
    p99: worst(1),
    p999: worst(2),
    max: worst(3),
  },
  generators: GENERATORS,
  kernel: { ...series, audit: audited, probe },
  perOp,
  failures,
};
if (JSON_OUT) console.log(JSON.stringify(summary));
else {
  console.log(
    `load: ${SESSIONS} sessions (${PERSONAS} personas) for ${summary.seconds}s: ${summary.ops} ops, ${summary.opsPerSecond} ops/s, ` +
      `p50 ${summary.p50_us} µs, p99 ${summary.p99_us} µs, p99.9 ${summary.p999_us} µs; kernel rss ${summary.rssStartMb}→${summary.rssMaxMb} MB` +
      (rssByMinute.length ? `; by minute ${rssByMinute.join(", ")} MB` : "") +
      `\n  the generators' own event-loop delay (${GENERATORS} generators, the worst's): p50 ${summary.generatorLoopDelayMs.p50} ms, p99 ${summary.generatorLoopDelayMs.p99} ms, p99.9 ${summary.generatorLoopDelayMs.p999} ms, max ${summary.generatorLoopDelayMs.max} ms`,
  );
  const k = series;
  if (k)
    console.log(
      `  the kernel's own view: arrival to response p50 ${k.p50_us} µs, p99 ${k.p99_us} µs, p99.9 ${k.p999_us} µs (bucket estimates; ` +
        `${(k.over3msShare * 100).toFixed(2)} % over 3 ms, ${(k.over10msShare * 100).toFixed(3)} % over 10 ms); ` +
        `loop delay p50 ${k.loopDelayMs.p50} ms, p99 ${k.loopDelayMs.p99} ms, max ${k.loopDelayMs.max} ms\n` +
        `  the kernel's GC: ${Object.entries(k.gc)
          .map(([kind, g]) => `${kind} ${g.count}× ${g.totalMs} ms (${g.over10ms} over 10 ms)`)
          .join(
            ", ",
          )}; audit commits ${k.auditCommits.count}, ${k.auditCommits.over3ms} over 3 ms, ${k.auditCommits.over10ms} over 10 ms; WAL top-ups on the kernel's thread ${k.walTopUps.count}× ${k.walTopUps.totalMs} ms`,
    );
  const a = audited;
  if (a)
    console.log(
      `  the audit records' durationUs (arrival to record, before the commit; exact, ${a.records} records): p50 ${a.p50_us} µs, p99 ${a.p99_us} µs, p99.9 ${a.p999_us} µs, max ${a.max_us} µs`,
    );
  if (probe) {
    const line = (name: string, x: NonNullable<typeof probe>["all"]) =>
      `    ${name.padEnd(14)} ${String(x.requests).padStart(7)} requests: arrival to answer p99 ${x.wallMs.p99} ms, p99.9 ${x.wallMs.p999} ms, max ${x.wallMs.max} ms; ` +
      `less the waits for a CPU p99 ${x.ownMs.p99} ms, p99.9 ${x.ownMs.p999} ms, max ${x.ownMs.max} ms (${x.ownOver10ms} over 10 ms, ${x.ownOver20ms} over 20); asleep p99.9 ${x.asleepMs.p999} ms, max ${x.asleepMs.max} ms`;
    console.log(
      "  the kernel's probe (exact, per request; its thread's time waiting for a CPU taken out):\n" +
        `${line("all", probe.all)}\n${line(`first ${probe.first.seconds} s`, probe.first)}\n${line("after", probe.rest)}\n` +
        `    GC: minor ${probe.gc.minor} (p99 ${probe.gc.minorP99Ms} ms, max ${probe.gc.minorMaxMs} ms), others ${probe.gc.other} (max ${probe.gc.otherMaxMs} ms)`,
    );
  }
  for (const [op, s] of Object.entries(perOp)) {
    // Beside each op's latency as measured by the generators, its records' (the kernel's own view).
    const k = a?.byOp[op];
    console.log(
      `  ${op.padEnd(15)} ${String(s.count).padStart(8)}  p50 ${s.p50_us} µs  p99 ${s.p99_us} µs  p99.9 ${s.p999_us} µs` +
        (k ? `   in the kernel: p50 ${k.p50_us} µs  p99 ${k.p99_us} µs  p99.9 ${k.p999_us} µs` : ""),
    );
  }
  for (const f of failures) console.log(`FAIL ${f}`);
}
process.exit(failures.length ? 1 : 0);
