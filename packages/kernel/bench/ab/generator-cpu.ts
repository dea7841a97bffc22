/**
 * `node packages/kernel/dist/bench/ab/generator-cpu.js <other checkout> [--rounds N] [--windows N]
 * [--seconds S] [--warmup S] [--prof DIR]`: the kernel's CPU per audited `bench.noop` request at
 * 256 in flight under the light generator (`kpip.kernel.cpu_us_per_req`, `kpip.uds.gen.rps_256`),
 * this checkout against another built one. Each round starts a bench kernel of each checkout, both
 * at once, each with its own light generator warmed up for `warmup` seconds; then `windows` pairs
 * of windows of `seconds`, the two kernels taking turns (the first of a pair alternates), so the two
 * sides of a pair are measured within the same seconds on a shared machine. One JSON line per
 * pair: req/s, the whole process's CPU per request and the request thread's alone
 * (from each thread's /proc schedstat, to the nanosecond; the request thread's without V8's GC
 * helpers, the checkpoint worker and libuv's pool); then
 * the medians and the paired differences' median and quartiles. `--prof DIR`: the kernels run
 * with `--cpu-prof` into DIR.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { serverEnv } from "../proc.js";
import { abArgs } from "./common.js";

const { other, here, rounds } = abArgs("generator-cpu.js", { records: 0, rounds: 3 });
const argv = process.argv.slice(2);
const opt = (name: string) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const windows = Number(opt("--windows") ?? 10);
const seconds = Number(opt("--seconds") ?? 1);
const prof = opt("--prof");
/** Seconds of generator load before the windows (JIT, the young generation's growth): not measured. */
const warmup = Number(opt("--warmup") ?? 2);

/** Nanoseconds on a CPU of a thread so far (/proc/.../schedstat: exact, where stat counts 10 ms ticks). */
function threadNs(pid: number, tid: number): number {
  try {
    return Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
  } catch {
    return 0; // a thread that ended: its time is in no window's difference either way
  }
}

/** The process's threads' nanoseconds on a CPU, by thread, and the request thread's. */
function cpuNs(pid: number): { all: Map<string, number>; main: number } {
  const all = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) all.set(tid, threadNs(pid, Number(tid)));
  return { all, main: all.get(String(pid)) ?? 0 };
}

/** CPU µs between two readings: threads present in both, and those started between them. */
function spentUs(a: { all: Map<string, number> }, b: { all: Map<string, number> }): number {
  let ns = 0;
  for (const [tid, t] of b.all) ns += t - (a.all.get(tid) ?? 0);
  return ns / 1000;
}

interface Window {
  rps: number;
  us: number;
  mainUs: number;
}

/** A checkout's bench kernel with the light generator connected, warmed up. */
interface Loaded {
  window(): Promise<Window>;
  stop(): Promise<void>;
}

async function start(root: string): Promise<Loaded> {
  const { openGenerator } = (await import(
    pathToFileURL(join(root, "packages/kernel/dist/bench/side-by-side/generator.js")).href
  )) as typeof import("../side-by-side/generator.js");
  const { loadIdentity } = (await import(
    pathToFileURL(join(root, "packages/client/dist/src/index.js")).href
  )) as typeof import("@kpip/client");
  const home = join(mkdtempSync(join(tmpdir(), "kpip-genab-")), "home");
  const flags = prof ? ["--cpu-prof", `--cpu-prof-dir=${prof}`] : [];
  const server = join(root, "packages/kernel/dist/bench/side-by-side/kernel-server.js");
  const p = spawn(process.execPath, [...flags, server, "--home", home], {
    stdio: ["ignore", "pipe", "inherit"],
    env: serverEnv(),
  });
  const remove = () => {
    if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
    rmSync(join(home, ".."), { recursive: true, force: true });
  };
  try {
    const info = await new Promise<{ socket: string; pid: number }>((ok, fail) => {
      let out = "";
      p.stdout.on("data", (d) => {
        out += d;
        const nl = out.indexOf("\n");
        if (nl >= 0) ok(JSON.parse(out.slice(0, nl)) as { socket: string; pid: number });
      });
      p.once("exit", (c) => fail(new Error(`${server} exited ${c}`)));
    });
    const identity = loadIdentity(join(home, "admin.identity"));
    const token = Buffer.from(readFileSync(join(home, "admin.token"), "utf8").trim(), "base64url");
    const gen = await openGenerator(info.socket, identity, token, "bench.noop");
    if (warmup > 0) await gen.run(256, warmup);
    return {
      async window() {
        const a = cpuNs(info.pid);
        const { rps, sent } = await gen.run(256, seconds);
        const b = cpuNs(info.pid);
        return { rps: Math.round(rps), us: spentUs(a, b) / sent, mainUs: (b.main - a.main) / 1000 / sent };
      },
      async stop() {
        gen.close();
        const exited = new Promise((r) => p.once("exit", r));
        p.kill("SIGTERM");
        await exited;
        remove();
      },
    };
  } catch (e) {
    remove();
    throw e;
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};
const r2 = (x: number) => Math.round(x * 100) / 100;
const all: { other: Window; here: Window }[] = [];
for (let i = 0; i < rounds; i++) {
  // Both kernels up at once, their windows alternating: each pair is measured in the same seconds.
  const a = await start(other);
  const b = await start(here);
  try {
    for (let w = 0; w < windows; w++) {
      const first = w % 2 === 0;
      const x = first ? await a.window() : await b.window();
      const y = first ? await b.window() : await a.window();
      const pair = first ? { other: x, here: y } : { other: y, here: x };
      all.push(pair);
      const show = (v: Window) => ({ rps: v.rps, us: r2(v.us), main_us: r2(v.mainUs) });
      process.stdout.write(
        `${JSON.stringify({ round: i + 1, window: w + 1, other: show(pair.other), here: show(pair.here) })}\n`,
      );
    }
  } finally {
    await a.stop();
    await b.stop();
  }
}
const side = (k: "other" | "here", f: keyof Window) => median(all.map((p) => p[k][f]));
const diff = (f: keyof Window) => all.map((p) => p.here[f] - p.other[f]);
const q = (xs: number[], at: number) => [...xs].sort((m, n) => m - n)[Math.floor(at * (xs.length - 1))] as number;
const summary = {
  pairs: all.length,
  other: { root: other, rps: side("other", "rps"), us: r2(side("other", "us")), main_us: r2(side("other", "mainUs")) },
  here: { root: here, rps: side("here", "rps"), us: r2(side("here", "us")), main_us: r2(side("here", "mainUs")) },
  // The paired differences (here − other): median and quartiles.
  diff_us: [q(diff("us"), 0.25), median(diff("us")), q(diff("us"), 0.75)].map(r2),
  diff_main_us: [q(diff("mainUs"), 0.25), median(diff("mainUs")), q(diff("mainUs"), 0.75)].map(r2),
  here_lower_main: all.filter((p) => p.here.mainUs < p.other.mainUs).length,
};
process.stdout.write(`${JSON.stringify(summary)}\n`);
