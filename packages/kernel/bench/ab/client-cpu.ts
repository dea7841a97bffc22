/**
 * `node packages/kernel/dist/bench/ab/client-cpu.js <other checkout, built> [--seconds S] [--rounds N] [--inflight K]`:
 * the `@kpip/client` CPU per request of this checkout against another's, measured at the same
 * time against one kernel (this checkout's bench kernel): two client processes, one per
 * checkout, each keeping K (default 128) `bench.noop` calls in flight. Run side by side, both see the same
 * kernel and the same machine load, so their CPU per request compares even on a busy machine
 * (apart, the figure moves with how many answers arrive per socket read). One JSON line each.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { checkoutKernel } from "./common.js";

const args = process.argv.slice(2);
const self = fileURLToPath(import.meta.url);
const opt = (name: string, dflt: number) => {
  const at = args.indexOf(name);
  return at >= 0 ? Number(args[at + 1]) : dflt;
};

if (args[0] === "--child") {
  // One client: args root, socket, home, seconds, calls in flight.
  const [, root, socket, home, secs, inflight] = args as [string, string, string, string, string, string];
  const { KernelClient, loadIdentity } = (await import(
    pathToFileURL(join(root, "packages/client/dist/src/index.js")).href
  )) as typeof import("@kpip/client");
  const c = await KernelClient.connect({
    socket,
    identity: loadIdentity(join(home, "admin.identity")),
    tokens: [readFileSync(join(home, "admin.token"), "utf8")],
    reconnect: false,
    shm: false,
  });
  for (let i = 0; i < 2000; i++) await c.call("bench.noop", "kernel://");
  let done = 0;
  let stop = false;
  const cpu0 = process.cpuUsage();
  const worker = async () => {
    while (!stop) {
      await c.call("bench.noop", "kernel://");
      done++;
    }
  };
  const all = Array.from({ length: Number(inflight) }, worker);
  await new Promise((r) => setTimeout(r, Number(secs) * 1000));
  stop = true;
  await Promise.all(all);
  const cpu = process.cpuUsage(cpu0);
  await c.close();
  process.stdout.write(
    `${JSON.stringify({ root, inflight: Number(inflight), requests: done, client_cpu_us_per_req: Math.round(((cpu.user + cpu.system) / done) * 10) / 10, system_us_per_req: Math.round((cpu.system / done) * 10) / 10 })}\n`,
  );
  process.exit(0);
}

const other = args.find((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
if (!other) {
  process.stderr.write("usage: client-cpu.js <other kpip checkout, built> [--seconds S] [--rounds N] [--inflight K]\n");
  process.exit(2);
}
const here = resolve(fileURLToPath(new URL("../../../../../", import.meta.url)));
const seconds = opt("--seconds", 4);
const rounds = opt("--rounds", 2);
const inflight = opt("--inflight", 128);
// This checkout's bench kernel; its own client stays idle beside the two measured.
const kernel = await checkoutKernel(here, "kpip-ab-client-");
try {
  const run = (root: string) =>
    new Promise<string>((ok, fail) => {
      const p = spawn(process.execPath, [self, "--child", root, kernel.socket, kernel.home, String(seconds), String(inflight)], {
        stdio: ["ignore", "pipe", "inherit"],
      });
      let out = "";
      p.stdout.on("data", (d) => {
        out += d;
      });
      p.once("exit", (c) => (c === 0 ? ok(out) : fail(new Error(`client of ${root} exited ${c}`))));
    });
  for (let r = 0; r < rounds; r++) {
    for (const line of await Promise.all([run(resolve(other)), run(here)])) process.stdout.write(line);
  }
} finally {
  await kernel.client.close();
  await kernel.stop();
  kernel.remove();
}
