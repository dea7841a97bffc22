// The TypeScript client measured like python/bench.py (same op, counts and window), for BENCHMARKS.md.
//   node python/bench-ts.mjs --home .kpip [--n 2000] [--inflight 64]
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { KernelClient } from "@kpip/client";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const home = arg("home", ".kpip");
const n = Number(arg("n", 2000));
const inflight = Number(arg("inflight", 64));
const c = await KernelClient.connect({
  socket: join(home, "kernel.sock"),
  identity: join(home, "admin.identity"),
  tokens: [readFileSync(join(home, "admin.token"), "utf8")],
});
for (let i = 0; i < 200; i++) await c.call("system.health", "kernel://");
const lat = [];
for (let i = 0; i < n; i++) {
  const t0 = performance.now();
  await c.call("system.health", "kernel://");
  lat.push(performance.now() - t0);
}
lat.sort((a, b) => a - b);
let done = 0;
const end = performance.now() + 3000;
const t0 = performance.now();
await Promise.all(
  Array.from({ length: inflight }, async () => {
    while (performance.now() < end) {
      await c.call("system.health", "kernel://");
      done++;
    }
  }),
);
console.log(`ts.uds.p50_us ${Math.round(lat[Math.floor(n / 2)] * 1000)}`);
console.log(`ts.uds.rps_${inflight} ${Math.round(done / ((performance.now() - t0) / 1000))}`);
await c.close();
