#!/usr/bin/env node
// Runs every compiled test file with node's test runner. Usage: node scripts/test.mjs [substring...]
// Extra filters narrow the run to test files whose path contains one of the substrings.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const roots = readdirSync("packages").map((p) => join("packages", p, "dist", "test"));
const files = [];
const walk = (dir) => {
  let entries;
  try {
    entries = readdirSync(dir);
  } catch {
    return;
  }
  for (const e of entries) {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) walk(p);
    else if (e.endsWith(".test.js")) files.push(p);
  }
};
// tsc never deletes output: a compiled test whose source is gone (renamed, removed) would run
// against today's code and fail for nothing. Only tests with a source file run.
const hasSource = (f) => existsSync(f.replace(`${join("dist", "test")}`, "test").replace(/\.js$/, ".ts"));
roots.forEach(walk);
const stale = files.filter((f) => !hasSource(f));
if (stale.length) console.error(`skipping ${stale.length} compiled test file(s) without a source: ${stale.join(", ")}`);
files.splice(0, files.length, ...files.filter(hasSource));
const filters = process.argv.slice(2);
const selected = filters.length ? files.filter((f) => filters.some((s) => f.includes(s))) : files;
if (selected.length === 0) {
  console.error("no test files found: run `npm run build` first");
  process.exit(1);
}
// The CLI tests run the bundled `kpip` entry: bring it up to date with the compiled files (a no-op when it is).
const bundled = spawnSync(process.execPath, [fileURLToPath(new URL("./bundle-cli.mjs", import.meta.url))], { stdio: "inherit" });
if (bundled.status !== 0) process.exit(bundled.status ?? 1);
// Files at once: three by default on CI's two cores — at two, the files' waits (kernel starts, child
// processes, sockets) left 1.5 of the cores busy; at three 1.65–1.8, the run ~15 % shorter (627 s
// against ~650–760 s, fresh-clone runs of 2026-12-06). Four was no shorter (1,690 tests: 707 s against
// 714 s at three) for 12 % more CPU in contention (bench-quick's file 136 s against 65 s): the CPU is
// the bound. KPIP_TEST_CONCURRENCY tries another.
const concurrency = Number(process.env.KPIP_TEST_CONCURRENCY ?? 3);
if (!Number.isInteger(concurrency) || concurrency < 1) {
  console.error(`KPIP_TEST_CONCURRENCY must be a positive integer (got ${process.env.KPIP_TEST_CONCURRENCY})`);
  process.exit(2);
}
// The CLI's audit tools keep a side index in the user's cache ($XDG_CACHE_HOME): the tests' homes are
// temporary, so their indexes go to a cache of the run's own, removed with it, never the runner's ~/.cache.
const cacheHome = mkdtempSync(join(tmpdir(), "kpip-test-cache-"));
const started = { wall: performance.now(), cpu: childCpu() };
const r = spawnSync(
  process.execPath,
  [
    "--test",
    "--test-reporter=spec",
    "--test-reporter-destination=stdout",
    // names the tests that were running when a file timed out (the spec reporter names only the
    // file), on stderr; ends the run with the slowest files and their times (where CI's minutes go).
    // One reporter for both: a third one made node warn (MaxListenersExceededWarning, run-reporter.mjs).
    `--test-reporter=${fileURLToPath(new URL("./run-reporter.mjs", import.meta.url))}`,
    "--test-reporter-destination=stdout",
    `--test-concurrency=${concurrency}`,
    // No --test-force-exit: a file's process then exits before its last test reports reach the
    // runner (a fresh-clone CI run counted 1,264 of 1,265 tests: the last file's last two events lost).
    // generous: a file needs ~4x its quiet time on a machine loaded 8 deep; a hang still ends, named
    "--test-timeout=600000",
    // (node 20's runner sorts the files by path itself, whatever their order here)
    ...selected.sort(),
  ],
  { stdio: "inherit", env: { ...process.env, XDG_CACHE_HOME: cacheHome } },
);
rmSync(cacheHome, { recursive: true, force: true });
cpuLine();
process.exit(r.status ?? 1);

/** CPU seconds of the children this process waited for, and theirs (Linux's /proc; elsewhere undefined). */
function childCpu() {
  let stat;
  try {
    stat = readFileSync("/proc/self/stat", "utf8");
  } catch {
    return undefined;
  }
  // After the command name (which may hold spaces): cutime and cstime are the 14th and 15th fields, in 1/100 s.
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[13]) + Number(f[14])) / 100;
}

/**
 * How busy the tests kept the machine: the CPU time of every process the run waited for (the
 * files' processes and the kernels and commands they ran), against the run's wall time. Well
 * under the cores in use means files waiting on timers or on their children, not on the CPU.
 */
function cpuLine() {
  const end = childCpu();
  if (end === undefined || started.cpu === undefined) return;
  const cpu = end - started.cpu;
  const wall = (performance.now() - started.wall) / 1000;
  console.log(
    `CPU of the test processes: ${cpu.toFixed(0)} s in ${wall.toFixed(0)} s wall, ${(cpu / wall).toFixed(2)} of ${availableParallelism()} cores busy on average (--test-concurrency=${concurrency})`,
  );
}
