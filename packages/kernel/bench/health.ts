/**
 * `npm run bench:health`: latency and throughput of system.health over the Unix socket,
 * full path (codec, authorization, audit with group commit, primitive, response), with the
 * kernel in its own process. Options: --requests N (default 20000), --json.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { KernelClient } from "@kpip/client";
import { outputIncludes } from "@kpip/protocol/testing";

const args = process.argv.slice(2);
const N = Number(args[args.indexOf("--requests") + 1] || 20000) || 20000;
const json = args.includes("--json");
const main = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

const home = mkdtempSync(join(tmpdir(), "kpip-bench-"));
const kernel = spawn(process.execPath, [main, "kernel", "--home", home, "--log-level", "silent"], {
  stdio: ["ignore", "pipe", "inherit"],
});
await outputIncludes(kernel, "is running");

const results: { name: string; unit: string; value: number }[] = [];
try {
  const client = await KernelClient.connect({
    socket: join(home, "kernel.sock"),
    identity: join(home, "admin.identity"),
    tokens: [readFileSync(join(home, "admin.token"), "utf8")],
  });
  for (let i = 0; i < 2000; i++) await client.call("system.health", "kernel://");
  // latency: one request in flight
  const lat: number[] = [];
  for (let i = 0; i < Math.min(N, 10000); i++) {
    const t = process.hrtime.bigint();
    await client.call("system.health", "kernel://");
    lat.push(Number(process.hrtime.bigint() - t) / 1000);
  }
  lat.sort((a, b) => a - b);
  const q = (p: number) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] as number;
  results.push({ name: "kpip.uds.health.p50_us", unit: "us", value: q(0.5) });
  results.push({ name: "kpip.uds.health.p99_us", unit: "us", value: q(0.99) });
  // throughput with W requests in flight on one connection
  for (const window of [1, 16, 256]) {
    let sent = 0;
    const t = process.hrtime.bigint();
    const worker = async () => {
      while (sent < N) {
        sent++;
        await client.call("system.health", "kernel://");
      }
    };
    await Promise.all(Array.from({ length: window }, worker));
    const secs = Number(process.hrtime.bigint() - t) / 1e9;
    results.push({ name: `kpip.uds.health.rps_${window}`, unit: "req/s", value: Math.round(N / secs) });
  }
  await client.close();
} finally {
  kernel.kill("SIGINT");
  await new Promise((r) => kernel.once("exit", r));
  rmSync(home, { recursive: true, force: true });
}
for (const r of results) {
  if (json) console.log(JSON.stringify(r));
  else console.log(`${r.name.padEnd(28)} ${String(r.value.toFixed(r.unit === "us" ? 1 : 0)).padStart(10)} ${r.unit}`);
}
