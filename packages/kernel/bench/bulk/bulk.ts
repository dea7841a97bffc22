/**
 * `npm run bench:bulk [-- --writes N] [--mib M] [--repo PATH] [--floors 0] [--prof DIR]`: the large-object path alone, for
 * A/B runs on a busy machine (the full `npm run bench` measures the same things among many).
 *
 *   - `storage.write` of 64 MiB, inline and through shared memory, N times each (default 3,
 *     after one warm-up): GB/s and the kernel's CPU per write (from /proc/<pid>/stat);
 *   - one object of M MiB (default 1024) through the chunked upload, 8 MiB chunks, into a
 *     fresh kernel: GB/s, the kernel's RSS before and at its peak, CPU per GiB on both sides.
 *
 *   - first the floors of this machine (floors.ts: SHA-256, memcpy, a plain Unix-socket transfer,
 *     a durable file write…), so each kpip figure is printed with its ratio to what the machine
 *     allows; `--floors 0` skips them.
 *
 * `--prof DIR` writes the kernels' CPU profiles there (run the client itself with --cpu-prof).
 * `--repo` points at another built checkout (e.g. a worktree of main) whose kernel and client
 * are measured instead; a checkout without the chunked upload skips that part.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { serverEnv } from "../proc.js";
import { bulk1gFloor, FLOOR_BYTES, floorFigures, measureFloors } from "./floors.js";

const argv = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? (argv[i + 1] as string) : dflt;
};
const repo = resolve(opt("repo", fileURLToPath(new URL("../../../../../", import.meta.url))));
const writes = Number(opt("writes", "3"));
const bulk = Number(opt("mib", "1024")) * 1024 * 1024;
const { KernelClient, loadIdentity } = (await import(
  `${repo}/packages/client/dist/src/index.js`
)) as typeof import("@kpip/client");

/** CPU seconds of a process, all its threads (or of its main thread alone: `main`). */
const cpuSeconds = (pid: number, main = false) => {
  const f = (readFileSync(main ? `/proc/${pid}/task/${pid}/stat` : `/proc/${pid}/stat`, "utf8").split(") ")[1] as string).split(
    " ",
  );
  return (Number(f[11]) + Number(f[12])) / 100;
};
/** User and system CPU seconds of each thread of a process, by thread id. */
const threadCpu = (pid: number) => {
  const out = new Map<string, [number, number]>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const f = (readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8").split(") ")[1] as string).split(" ");
      out.set(tid, [Number(f[11]) / 100, Number(f[12]) / 100]);
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
};
const rssMb = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) / 1024;
const clientCpu = (since: NodeJS.CpuUsage) => {
  const u = process.cpuUsage(since);
  return (u.user + u.system) / 1e6;
};

/** Runs `f` against a fresh kernel of `repo` in its own process and home. */
async function withKernel(
  f: (k: { pid: number; connect: (shm?: boolean) => Promise<import("@kpip/client").KernelClient> }) => Promise<void>,
) {
  const home = mkdtempSync(join(tmpdir(), "kpip-bulk-"));
  const prof = opt("prof", "");
  const args = [...(prof ? ["--cpu-prof", "--cpu-prof-dir", prof] : []), fileURLToPath(new URL("kernel.js", import.meta.url))];
  const child = spawn(process.execPath, [...args, repo, home], {
    stdio: ["ignore", "pipe", "inherit"],
    env: serverEnv(),
  });
  try {
    const info = await new Promise<{ socket: string; pid: number }>((ok, fail) => {
      let out = "";
      child.stdout.on("data", (d) => {
        out += d;
        if (out.includes("\n")) ok(JSON.parse(out));
      });
      child.once("exit", (c) => fail(new Error(`kernel exited with ${c}`)));
    });
    const base = {
      socket: info.socket,
      identity: loadIdentity(join(home, "admin.identity")),
      tokens: [readFileSync(join(home, "admin.token"), "utf8")],
      reconnect: false,
    };
    await f({ pid: info.pid, connect: (shm?: boolean) => KernelClient.connect(shm === undefined ? base : { ...base, shm }) });
  } finally {
    if (child.exitCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await exited;
    }
    rmSync(home, { recursive: true, force: true });
  }
}

console.log(`bench:bulk — ${repo} — ${new Date().toISOString()}`);
/** Seconds per 64 MiB of each floor (none with --floors 0). */
const floors = opt("floors", "1") === "0" ? {} : await measureFloors(tmpdir());
for (const [name, gbps] of floorFigures(floors)) console.log(`${name.padEnd(28)} ${gbps.toFixed(3)} GB/s`);
if (floors.sha256 !== undefined) console.log(`${"floor.bulk1g_gbps".padEnd(28)} ${bulk1gFloor(floors).toFixed(3)} GB/s`);
/** " = 0.41× floor.x" for a figure in GB/s beside the floor it is bounded by. */
const vs = (gbps: number, ...names: string[]) =>
  names
    .filter((n) => floors[n] !== undefined)
    .map((n) => ` = ${(gbps / (FLOOR_BYTES / (floors[n] as number) / 1e9)).toFixed(2)}× floor.${n}`)
    .join("");
await withKernel(async ({ pid, connect }) => {
  const data = Buffer.alloc(64 * 1024 * 1024, 0x3c);
  for (const shm of [false, true]) {
    const c = await connect(shm);
    {
      // bench.sink first: the same 64 MiB through the transport and the pipeline, stored nowhere.
      const times: number[] = [];
      const k0 = cpuSeconds(pid);
      for (let i = 0; i <= writes; i++) {
        const t = process.hrtime.bigint();
        await c.call("bench.sink", "kernel://", { data });
        if (i > 0) times.push(Number(process.hrtime.bigint() - t) / 1e9);
      }
      const kcpu = ((cpuSeconds(pid) - k0) / (writes + 1)) * 1000;
      const mean = (data.length * times.length) / times.reduce((a, b) => a + b, 0) / 1e9;
      console.log(
        `bench.sink 64 MiB ${shm ? "shm   " : "inline"}: mean ${mean.toFixed(3)} GB/s${vs(mean, "uds")}; kernel CPU ${kcpu.toFixed(0)} ms per call`,
      );
    }
    const times: number[] = [];
    const k0 = cpuSeconds(pid);
    const m0 = cpuSeconds(pid, true);
    for (let i = 0; i <= writes; i++) {
      // New bytes every time: a content-addressed store would skip a repeated body.
      data.writeUInt32BE(i, 0);
      data.writeUInt8(shm ? 1 : 0, 4);
      const t = process.hrtime.bigint();
      await c.storage.write(`obj://bulk/w-${shm}`, data);
      if (i > 0) times.push(Number(process.hrtime.bigint() - t) / 1e9);
    }
    const kcpu = ((cpuSeconds(pid) - k0) / (writes + 1)) * 1000;
    const kmain = ((cpuSeconds(pid, true) - m0) / (writes + 1)) * 1000;
    const mean = (data.length * times.length) / times.reduce((a, b) => a + b, 0) / 1e9;
    const best = data.length / Math.min(...times) / 1e9;
    const how = shm ? (c.features.includes("shm") ? "shm   " : "shm (unavailable: inline)") : "inline";
    console.log(
      `storage.write 64 MiB ${how}: mean ${mean.toFixed(3)} GB/s${vs(mean, "store64m", "durable")}, best ${best.toFixed(3)} GB/s (n=${times.length}); kernel CPU ${kcpu.toFixed(0)} ms per write (main thread ${kmain.toFixed(0)})`,
    );
    await c.close();
  }
});
await withKernel(async ({ pid, connect }) => {
  const c = await connect(opt("bulk-shm", "") === "" ? undefined : opt("bulk-shm", "") === "1");
  const storage = c.storage as { putLarge?: (t: string, s: Iterable<Uint8Array>, o: object) => Promise<unknown> };
  if (bulk === 0 || typeof storage.putLarge !== "function") {
    console.log("chunked upload: not in this checkout (or --mib 0)");
    await c.close();
    return;
  }
  const piece = Buffer.alloc(Number(opt("chunk-mib", "8")) * 1024 * 1024, 0x5d);
  const window = opt("window", "") === "" ? {} : { window: Number(opt("window", "")) };
  const before = rssMb(pid);
  let peak = before;
  const sampler = setInterval(() => {
    peak = Math.max(peak, rssMb(pid));
  }, 50);
  const k0 = cpuSeconds(pid);
  const m0 = cpuSeconds(pid, true);
  const th0 = threadCpu(pid);
  const c0 = process.cpuUsage();
  const t = process.hrtime.bigint();
  await storage.putLarge(
    "obj://bulk/big",
    (function* () {
      for (let off = 0; off < bulk; off += piece.length) yield piece;
    })(),
    { size: bulk, chunkBytes: piece.length, ...window },
  );
  const secs = Number(process.hrtime.bigint() - t) / 1e9;
  clearInterval(sampler);
  // How many chunks went through shared memory (the rest inline: the segment still held the previous one).
  const viaShm = (c as { shmFrames?: { sent: number } }).shmFrames?.sent;
  const perGiB = 2 ** 30 / bulk;
  console.log(
    `chunked upload ${bulk / 2 ** 20} MiB: ${(bulk / secs / 1e9).toFixed(3)} GB/s${floors.sha256 === undefined ? "" : ` = ${(bulk / secs / 1e9 / bulk1gFloor(floors)).toFixed(2)}× floor.bulk1g`}; kernel RSS ${before.toFixed(0)} MB before, ${Math.max(peak, rssMb(pid)).toFixed(0)} MB at peak; CPU per GiB: kernel ${((cpuSeconds(pid) - k0) * perGiB).toFixed(2)} s (main thread ${((cpuSeconds(pid, true) - m0) * perGiB).toFixed(2)} s), client ${(clientCpu(c0) * perGiB).toFixed(2)} s${viaShm === undefined ? "" : `; ${viaShm} of ${Math.ceil(bulk / piece.length)} chunks via shm`}`,
  );
  // The kernel's busiest threads (main first; then typically the hash worker, libuv's writers, GC).
  const busiest = [...threadCpu(pid)]
    .map(([tid, [u, s]]) => {
      const [u0, s0] = th0.get(tid) ?? [0, 0];
      return { main: tid === String(pid), user: (u - u0) * perGiB, sys: (s - s0) * perGiB };
    })
    .sort((a, b) => Number(b.main) - Number(a.main) || b.user + b.sys - (a.user + a.sys))
    .slice(0, 6)
    .map((x) => `${x.main ? "main " : ""}${x.user.toFixed(2)}u+${x.sys.toFixed(2)}s`);
  console.log(`  kernel threads, CPU per GiB (busiest): ${busiest.join(", ")}`);
  await c.close();
});
