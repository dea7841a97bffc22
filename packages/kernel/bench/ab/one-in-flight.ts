/**
 * `node packages/kernel/dist/bench/ab/one-in-flight.js <other checkout> [--rounds N] [--calls N]`: the
 * one-in-flight sequence of `npm run bench` (`kpip.uds.p99_us`: a fresh bench kernel, four clients,
 * 1,000 warm-up `bench.noop` calls and N more on the first) with every request timed on both sides
 * (one-in-flight-probe.ts in the kernel, process.hrtime in this client, one clock), for this checkout
 * and another, alternating. One JSON line a run: the wall quantiles; the slowest 1 % split into the
 * kernel's own time (its arrival → answer less its wait for a CPU, plus kernel work — timers, the
 * index step, GC — between the client's send and its read), the kernel's thread waiting for a CPU,
 * and the rest (client, socket wake-ups); the kernel's own time quantiles, and counts robust to a
 * busy machine: requests over 200 µs of own time (all, and in the first 1,000 measured), index steps,
 * timer callbacks, scavenges, slow-1 % requests whose read waited behind an index step.
 * BENCHMARKS.md, round twenty-four. `KPIP_P99_V8=<flag>` sets a V8 flag in both kernels.
 */
import { readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { OneInFlightProbe } from "../one-in-flight-probe.js";
import { checkoutKernel } from "./common.js";

const args = process.argv.slice(2);
const other = args.find((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
const opt = (name: string, d: number) => {
  const at = args.indexOf(name);
  return at >= 0 ? Number(args[at + 1]) : d;
};
const rounds = opt("--rounds", 2);
const calls = opt("--calls", 20_000);
if (!other || !Number.isSafeInteger(rounds) || rounds < 1 || !Number.isSafeInteger(calls) || calls < 100) {
  process.stderr.write("usage: one-in-flight.js <other kpip checkout, built> [--rounds N] [--calls N]\n");
  process.exit(2);
}
const here = resolve(fileURLToPath(new URL("../../../../../", import.meta.url)));
const probe = fileURLToPath(new URL("../one-in-flight-probe.js", import.meta.url));
const BATCH_FLUSH = "M:() => this.flush()";

const q = (a: number[], p: number) => {
  const s = [...a].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? 0;
};
const r1 = (x: number) => Math.round(x * 10) / 10;

async function measure(root: string): Promise<Record<string, unknown>> {
  const out = join(tmpdir(), `kpip-p99-${process.pid}-${Date.now()}.json`);
  const env: Record<string, string> = { KPIP_P99_DIST: join(root, "packages/kernel/dist"), KPIP_P99_OUT: out };
  const k = await checkoutKernel(root, "kpip-p99-", { nodeArgs: ["--import", probe], env });
  const more = [];
  const t = new Float64Array(2 * calls);
  try {
    // As the bench: four clients connected, the calls on the first.
    for (let i = 0; i < 3; i++) more.push(await connectAnother(root, k.socket, k.home));
    const call = () => k.client.call("bench.noop", "kernel://");
    for (let i = 0; i < 1000; i++) await call();
    for (let i = 0; i < calls; i++) {
      const a = process.hrtime.bigint();
      await call();
      const b = process.hrtime.bigint();
      t[2 * i] = Number(a);
      t[2 * i + 1] = Number(b);
    }
    for (const c of more) await c.close();
    await k.client.close();
    await k.stop();
    const p = JSON.parse(readFileSync(out, "utf8")) as OneInFlightProbe;
    return { root, ...analyse(p, t) };
  } finally {
    k.remove();
    rmSync(out, { force: true });
  }
}

async function connectAnother(root: string, socket: string, home: string) {
  const { KernelClient, loadIdentity } = (await import(
    pathToFileURL(join(root, "packages/client/dist/src/index.js")).href
  )) as typeof import("@kpip/client");
  return KernelClient.connect({
    socket,
    identity: loadIdentity(join(home, "admin.identity")),
    tokens: [readFileSync(join(home, "admin.token"), "utf8")],
    reconnect: false,
    shm: false,
  });
}

function analyse(p: OneInFlightProbe, t: Float64Array): Record<string, unknown> {
  const ms = (ns: number) => (ns - p.offsetNs) / 1e6;
  // Each call to the kernel record whose read falls inside it (one in flight: exactly one).
  const rows: Record<
    "send" | "recv" | "read" | "wall" | "own" | "wait" | "gapWait" | "append" | "cpuIn" | "cpuBefore",
    number
  >[] = [];
  let j = 0;
  for (let i = 0; i < calls; i++) {
    const send = ms(t[2 * i] as number);
    const recv = ms(t[2 * i + 1] as number);
    while (j < p.requests.length && ((p.requests[j] as number[])[0] as number) < send) j++;
    const r = p.requests[j];
    if (!r || r[0] > recv) throw new Error(`call ${i}: no kernel record of it`);
    const [read, cpuRead, waitRead, , app0, app1, written, cpuWritten, waitWritten] = r;
    const wait = (waitWritten - waitRead) / 1e3;
    const prev = p.requests[j - 1];
    rows.push({
      send,
      recv,
      read,
      wall: (recv - send) * 1e3,
      own: (written - read) * 1e3 - wait,
      wait,
      gapWait: prev ? (waitRead - prev[8]) / 1e3 : 0,
      append: (app1 - app0) * 1e3,
      // The process's CPU (all threads, µs) from the read to the answer's write, and from the
      // previous answer's write to this read: the kernel's work between two requests.
      cpuIn: (cpuWritten - cpuRead) / 1e3,
      cpuBefore: prev ? (cpuRead - prev[7]) / 1e3 : 0,
    });
  }
  const first = rows[0]?.send ?? 0;
  const timers = p.timers.filter((x) => x[0] >= first && !x[2].startsWith(BATCH_FLUSH));
  const gcs = p.gcs.filter((g) => g[0] >= first);
  const during = (a: number, b: number, x: [number, number]) => Math.max(0, Math.min(b, x[1]) - Math.max(a, x[0])) * 1e3;
  const wall = rows.map((r) => r.wall);
  const p99 = q(wall, 0.99);
  const slow = rows.filter((r) => r.wall >= p99);
  let own = 0;
  let waiting = 0;
  let sum = 0;
  let behindIndex = 0;
  for (const r of slow) {
    const before =
      timers.reduce((s, x) => s + during(r.send, r.read, [x[0], x[1]]), 0) +
      gcs.reduce((s, g) => s + during(r.send, r.read, [g[0], g[0] + g[1]]), 0);
    const toRead = (r.read - r.send) * 1e3;
    const kernelBefore = Math.min(toRead, before);
    own += r.own + kernelBefore;
    waiting += r.wait + Math.max(0, Math.min(toRead - kernelBefore, r.gapWait));
    sum += r.wall;
    if (timers.some((x) => x[2] === "X:indexAudit" && x[1] > r.send && x[0] < r.read)) behindIndex++;
  }
  const owns = rows.map((r) => r.own);
  const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / Math.max(1, a.length);
  const cpuIn = rows.map((r) => r.cpuIn);
  const cpuBefore = rows.slice(1).map((r) => r.cpuBefore);
  const pc = (x: number) => Math.round((100 * x) / sum);
  // The 1,000 measured requests from the first signed checkpoint on (record 10,000: a commit path
  // that V8 deoptimized once a process, round twenty-six), and the 1,000 before it.
  const cp = (p.checkpoints ?? []).find((x) => x >= first);
  const at = cp === undefined ? -1 : rows.findIndex((r) => r.read >= cp);
  const window = (from: number, a: number, b: number) => {
    const w = from < 0 ? [] : rows.slice(Math.max(0, a), Math.max(0, b));
    return {
      over100: w.filter((r) => r.own > 100).length,
      over200: w.filter((r) => r.own > 200).length,
      cpu: r1(mean(w.map((r) => r.cpuIn + r.cpuBefore))),
    };
  };
  const before = window(at, at - 1000, at);
  const after = window(at, at, at + 1000);
  // The same around the first heartbeat PING inside the window (the frame path's shapes, round twenty-eight).
  const ping = (p.pings ?? []).find((x) => x >= first);
  const pingAt = ping === undefined ? -1 : rows.findIndex((r) => r.read >= ping);
  const beforePing = window(pingAt, pingAt - 1000, pingAt);
  const afterPing = window(pingAt, pingAt, pingAt + 1000);
  return {
    p50_us: r1(q(wall, 0.5)),
    p99_us: r1(p99),
    p999_us: r1(q(wall, 0.999)),
    slow1pc_kernel_own_pc: pc(own),
    slow1pc_kernel_waiting_pc: pc(waiting),
    slow1pc_outside_pc: pc(sum - own - waiting),
    own_p50_us: r1(q(owns, 0.5)),
    own_p99_us: r1(q(owns, 0.99)),
    own_p999_us: r1(q(owns, 0.999)),
    cpu_read_to_answer_us: r1(mean(cpuIn)),
    cpu_answer_to_read_us: r1(mean(cpuBefore)),
    cpu_read_to_answer_p50_us: r1(q(cpuIn, 0.5)),
    cpu_answer_to_read_p50_us: r1(q(cpuBefore, 0.5)),
    own_over_200us: owns.filter((x) => x > 200).length,
    own_over_200us_first_1000: owns.slice(0, 1000).filter((x) => x > 200).length,
    append_over_50us: rows.filter((r) => r.append > 50).length,
    index_steps: timers.filter((x) => x[2] === "X:indexAudit").length,
    timer_callbacks: timers.filter((x) => x[2] !== "X:indexAudit").length,
    scavenges: gcs.filter((g) => g[2] === 1).length,
    slow1pc_behind_index_step: behindIndex,
    // -1: no checkpoint inside the measured calls.
    checkpoint_at_call: at,
    own_over_100us_1000_before_checkpoint: before.over100,
    own_over_100us_1000_after_checkpoint: after.over100,
    own_over_200us_1000_after_checkpoint: after.over200,
    cpu_us_1000_before_checkpoint: before.cpu,
    cpu_us_1000_after_checkpoint: after.cpu,
    // -1: no heartbeat inside the measured calls.
    ping_at_call: pingAt,
    own_over_100us_1000_before_ping: beforePing.over100,
    own_over_100us_1000_after_ping: afterPing.over100,
    own_over_200us_1000_after_ping: afterPing.over200,
    cpu_us_1000_before_ping: beforePing.cpu,
    cpu_us_1000_after_ping: afterPing.cpu,
  };
}

for (let i = 0; i < rounds; i++) {
  for (const root of [resolve(other), here]) process.stdout.write(`${JSON.stringify(await measure(root))}\n`);
}
