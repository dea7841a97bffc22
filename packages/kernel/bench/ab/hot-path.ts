/**
 * `npm run bench:ab -- <other checkout> [--rounds N]`: the single-call and 256-in-flight path of
 * this checkout against another (built) checkout of kpip on the same machine, alternating, each
 * with its own bench kernel (side-by-side/kernel-server.js) and its own `@kpip/client`. Prints one
 * JSON line per run: p50/p99 of 5,000 sequential `bench.noop` calls, requests per second over 3 s
 * at 256 in flight, and the client's and the kernel's CPU per request (the kernel's from
 * /proc/<pid>/stat, over the sequential calls and over the 256-in-flight window). For A/B figures in BENCHMARKS.md.
 */
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { checkoutKernel, kernelCpuUs } from "./common.js";

const args = process.argv.slice(2);
const other = args.find((a) => !a.startsWith("--"));
const roundsAt = args.indexOf("--rounds");
const rounds = roundsAt >= 0 ? Number(args[roundsAt + 1]) : 2;
if (!other || !Number.isSafeInteger(rounds) || rounds < 1) {
  process.stderr.write("usage: npm run bench:ab -- <other kpip checkout, built> [--rounds N]\n");
  process.exit(2);
}
const here = resolve(fileURLToPath(new URL("../../../../../", import.meta.url)));

async function measure(root: string): Promise<Record<string, number | string>> {
  const k = await checkoutKernel(root, "kpip-ab-");
  const c = k.client;
  const info = { pid: k.pid };
  try {
    const call = () => c.call("bench.noop", "kernel://");
    for (let i = 0; i < 2000; i++) await call();
    const lat: number[] = [];
    const k0 = kernelCpuUs(info.pid);
    for (let i = 0; i < 5000; i++) {
      const t = process.hrtime.bigint();
      await call();
      lat.push(Number(process.hrtime.bigint() - t) / 1000);
    }
    const k1 = kernelCpuUs(info.pid);
    lat.sort((a, b) => a - b);
    let done = 0;
    let stop = false;
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    const worker = async () => {
      while (!stop) {
        await call();
        done++;
      }
    };
    const all = Array.from({ length: 256 }, worker);
    await new Promise((r) => setTimeout(r, 3000));
    stop = true;
    await Promise.all(all);
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = process.cpuUsage(cpu0);
    const k2 = kernelCpuUs(info.pid);
    await c.close();
    return {
      root,
      p50_us: Math.round(lat[lat.length >> 1] as number),
      p99_us: Math.round(lat[Math.floor(lat.length * 0.99)] as number),
      rps_256: Math.round(done / secs),
      client_cpu_us_per_req: Math.round(((cpu.user + cpu.system) / done) * 10) / 10,
      kernel_cpu_us_per_req_1: Math.round(((k1 - k0) / lat.length) * 10) / 10,
      kernel_cpu_us_per_req_256: Math.round(((k2 - k1) / done) * 10) / 10,
    };
  } finally {
    await k.stop();
    k.remove();
  }
}

for (let i = 0; i < rounds; i++) {
  for (const root of [resolve(other), here]) process.stdout.write(`${JSON.stringify(await measure(root))}\n`);
}
