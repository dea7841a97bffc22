/**
 * `node packages/kernel/dist/bench/ab/storage-write.js <checkout>... [--rounds N] [--seconds S]`:
 * small `storage.write`s (64 bytes, over 4,096 keys) through each named (built) checkout's bench
 * kernel (side-by-side/kernel-server.js) and its own `@kpip/client`, and through this checkout,
 * interleaved (each round starts one checkout later, so drift on a shared machine falls on all
 * of them). One JSON line per run: p50/p99 of 3,000 sequential writes, writes per second over S
 * seconds (default 5) at 256 in flight, the kernel's CPU per write in each (/proc/<pid>/stat),
 * and, after the kernel stopped, how many dedupe rows still name an intent record (null before
 * those columns existed). For the A/B figures of BENCHMARKS.md ("Clearing the effect rows").
 */
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { checkoutKernel, kernelCpuUs } from "./common.js";

const args = process.argv.slice(2);
const opt = (name: string, d: number) => {
  const at = args.indexOf(name);
  return at >= 0 ? Number(args[at + 1]) : d;
};
const rounds = opt("--rounds", 3);
const seconds = opt("--seconds", 5);
const others = args.filter((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
if (!Number.isSafeInteger(rounds) || rounds < 1 || !(seconds > 0)) {
  process.stderr.write("usage: storage-write.js <other kpip checkout, built>... [--rounds N] [--seconds S]\n");
  process.exit(2);
}
const here = resolve(fileURLToPath(new URL("../../../../../", import.meta.url)));
const roots = [...others.map((o) => resolve(o)), here];

const body = Buffer.alloc(64, 0x61);
const KEYS = 4096;

async function measure(root: string): Promise<Record<string, number | string | null>> {
  const k = await checkoutKernel(root, "kpip-ab-write-");
  const c = k.client;
  const info = { pid: k.pid };
  try {
    let n = 0;
    const write = () => c.storage.write(`obj://bench/k${n++ % KEYS}`, body);
    for (let i = 0; i < 1000; i++) await write();
    const lat: number[] = [];
    const k0 = kernelCpuUs(info.pid);
    for (let i = 0; i < 3000; i++) {
      const t = process.hrtime.bigint();
      await write();
      lat.push(Number(process.hrtime.bigint() - t) / 1000);
    }
    const k1 = kernelCpuUs(info.pid);
    lat.sort((a, b) => a - b);
    let done = 0;
    let stop = false;
    const t0 = process.hrtime.bigint();
    const worker = async () => {
      while (!stop) {
        await write();
        done++;
      }
    };
    const all = Array.from({ length: 256 }, worker);
    await new Promise((r) => setTimeout(r, seconds * 1000));
    stop = true;
    await Promise.all(all);
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const k2 = kernelCpuUs(info.pid);
    await c.close();
    await k.stop();
    // What a start after a kill would have to look at (the partial index dedupe_effects).
    let naming: number | null = null;
    const db = new Database(join(k.home, "kernel.db"), { readonly: true });
    try {
      naming = (db.prepare("SELECT count(*) AS n FROM dedupe WHERE intent_seq IS NOT NULL").get() as { n: number }).n;
    } catch {
      // No such column: a checkout from before it.
    } finally {
      db.close();
    }
    return {
      root,
      p50_us: Math.round(lat[lat.length >> 1] as number),
      p99_us: Math.round(lat[Math.floor(lat.length * 0.99)] as number),
      writes_per_s_256: Math.round(done / secs),
      kernel_cpu_us_per_write_1: Math.round(((k1 - k0) / lat.length) * 10) / 10,
      kernel_cpu_us_per_write_256: Math.round(((k2 - k1) / done) * 10) / 10,
      rows_naming_intents: naming,
    };
  } finally {
    k.remove();
  }
}

for (let r = 0; r < rounds; r++) {
  for (let i = 0; i < roots.length; i++) {
    const root = roots[(r + i) % roots.length] as string;
    process.stdout.write(`${JSON.stringify(await measure(root))}\n`);
  }
}
