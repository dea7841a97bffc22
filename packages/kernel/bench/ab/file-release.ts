/**
 * `node packages/kernel/dist/bench/ab/file-release.js <checkout>... [--rounds N] [--seconds S] [--rate R] [--kib K]`:
 * through each named (built) checkout's bench kernel (side-by-side/kernel-server.js) and its own
 * `@kpip/client`, and through this checkout, interleaved (each round starts one checkout later):
 * an honest persona sends `bench.noop` at one in flight for S seconds (default 20) while a churn
 * persona, at R requests a second (default 40, also its token's `rate`), writes an object of K KiB
 * (default 256: a file-store body, other bytes each time) and deletes it — one body released per
 * two requests. Also a run of the honest persona alone. One JSON line per run: the honest
 * persona's p50/p99/p99.9/max (µs), count and requests over 5 ms, the churn's deletes, the
 * fdatasyncs the kernel's thread made over the run and their time (sync-probe.ts, a preload given
 * to each checkout's kernel), and the machine's load average.
 * For BENCHMARKS.md ("Round twenty-two: file-store releases off the request thread").
 */
import { readFileSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { checkoutKernel } from "./common.js";

const args = process.argv.slice(2);
const opt = (name: string, d: number) => {
  const at = args.indexOf(name);
  return at >= 0 ? Number(args[at + 1]) : d;
};
const rounds = opt("--rounds", 3);
const seconds = opt("--seconds", 20);
const rate = opt("--rate", 40);
const kib = opt("--kib", 256);
const others = args.filter((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
if (!Number.isSafeInteger(rounds) || rounds < 1 || !(seconds > 0) || !(rate > 0) || !(kib > 0)) {
  process.stderr.write(
    "usage: file-release.js <other kpip checkout, built>... [--rounds N] [--seconds S] [--rate R] [--kib K]\n",
  );
  process.exit(2);
}
const here = resolve(fileURLToPath(new URL("../../../../../", import.meta.url)));
const roots = [...others.map((o) => resolve(o)), here];

type Client = import("@kpip/client").KernelClient;

/** This checkout's preload (sync-probe.js), given to every checkout's kernel: the same measure on each side. */
const PROBE = new URL("./sync-probe.js", import.meta.url).href;

async function measure(root: string, churn: boolean): Promise<Record<string, number | string | boolean>> {
  const probeOut = join(tmpdir(), `kpip-ab-release-syncs-${process.pid}.json`);
  rmSync(probeOut, { force: true });
  const env = { NODE_OPTIONS: process.env.NODE_OPTIONS, KPIP_SYNC_PROBE_OUT: process.env.KPIP_SYNC_PROBE_OUT };
  process.env.NODE_OPTIONS = `${env.NODE_OPTIONS ?? ""} --import=${PROBE}`.trim();
  process.env.KPIP_SYNC_PROBE_OUT = probeOut;
  let k: Awaited<ReturnType<typeof checkoutKernel>>;
  try {
    k = await checkoutKernel(root, "kpip-ab-release-");
  } finally {
    for (const [name, v] of Object.entries(env)) {
      if (v === undefined) delete process.env[name];
      else process.env[name] = v;
    }
  }
  const { KernelClient } = (await import(
    pathToFileURL(join(root, "packages/client/dist/src/index.js")).href
  )) as typeof import("@kpip/client");
  const { generateIdentity } = (await import(
    pathToFileURL(join(root, "packages/protocol/dist/src/index.js")).href
  )) as typeof import("@kpip/protocol");
  const admin = k.client;
  const clients: Client[] = [];
  const persona = async (id: string, rights: { ops: string[]; targets: string[] }[], limits?: Record<string, number>) => {
    const identity = generateIdentity(id);
    await admin.personas.register(id, identity.publicKey);
    const m = await admin.tokens.mint(id, { rights, ttlMs: 3_600_000, ...(limits ? { limits } : {}) });
    const c = await KernelClient.connect({ socket: k.socket, identity, tokens: [m.token], reconnect: false, shm: false });
    clients.push(c);
    return c;
  };
  try {
    const honest = await persona("honest", [{ ops: ["bench.noop"], targets: ["kernel://"] }]);
    const mallory = await persona("churn", [{ ops: ["storage.write", "storage.delete"], targets: ["obj://churn/**"] }], {
      rate,
    });
    let stop = false;
    let deletes = 0;
    let refused = 0;
    // The churn: one request every 1/rate s (one in flight), other bytes each time.
    const body = Buffer.alloc(kib * 1024, 0x6b);
    const churning = (async () => {
      if (!churn) return;
      const gap = 1000 / rate;
      let next = performance.now();
      for (let i = 0; !stop; i++) {
        const path = `obj://churn/o${i % 16}`;
        body.writeUInt32LE(i, 0);
        try {
          await mallory.storage.write(path, body);
          next += gap;
          await new Promise((r) => setTimeout(r, Math.max(0, next - performance.now())));
          await mallory.storage.delete(path);
          deletes++;
        } catch {
          refused++;
        }
        next += gap;
        await new Promise((r) => setTimeout(r, Math.max(0, next - performance.now())));
      }
    })();
    // Warm-up, then the honest persona's latencies.
    for (let i = 0; i < 500; i++) await honest.call("bench.noop", "kernel://", {});
    const lat: number[] = [];
    const load0 = loadavg()[0] as number;
    const end = performance.now() + seconds * 1000;
    while (performance.now() < end) {
      const t = process.hrtime.bigint();
      await honest.call("bench.noop", "kernel://", {});
      lat.push(Number(process.hrtime.bigint() - t) / 1000);
    }
    stop = true;
    await churning;
    // The kernel's syncs over the whole run (setup and warm-up included), written at its exit.
    for (const c of clients) await c.close().catch(() => {});
    await admin.close().catch(() => {});
    await k.stop();
    const syncs = JSON.parse(readFileSync(probeOut, "utf8")) as { syncs: number; ms: number; maxMs: number };
    rmSync(probeOut, { force: true });
    lat.sort((a, b) => a - b);
    const q = (p: number) => Math.round(lat[Math.min(lat.length - 1, Math.floor(lat.length * p))] as number);
    return {
      root,
      churn,
      n: lat.length,
      p50_us: q(0.5),
      p99_us: q(0.99),
      p999_us: q(0.999),
      max_us: Math.round(lat[lat.length - 1] as number),
      over_5ms: lat.filter((x) => x > 5000).length,
      deletes,
      refused,
      kernel_syncs: syncs.syncs,
      kernel_sync_ms: Math.round(syncs.ms),
      kernel_sync_max_ms: Math.round(syncs.maxMs * 10) / 10,
      load: Math.round(((load0 + (loadavg()[0] as number)) / 2) * 10) / 10,
    };
  } finally {
    for (const c of clients) await c.close().catch(() => {});
    await admin.close().catch(() => {});
    await k.stop().catch(() => {});
    k.remove();
  }
}

for (let r = 0; r < rounds; r++) {
  for (let i = 0; i < roots.length; i++) {
    const root = roots[(r + i) % roots.length] as string;
    process.stdout.write(`${JSON.stringify(await measure(root, true))}\n`);
  }
}
// The honest persona alone, once per checkout: the floor the runs above compare with.
for (const root of roots) process.stdout.write(`${JSON.stringify(await measure(root, false))}\n`);
