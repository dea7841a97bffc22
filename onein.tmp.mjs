import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
const root = process.argv[2]; const N = Number(process.argv[3] ?? 2000); const out = process.argv[4];
const { KernelClient, loadIdentity } = await import(join(root, "packages/client/dist/src/index.js"));
const home = mkdtempSync(join(tmpdir(), "kpip-onein-"));
const p = spawn(process.execPath, [join(root, "packages/kernel/dist/bench/side-by-side/kernel-server.js"), "--home", home], { stdio: ["ignore", "pipe", "inherit"] });
const info = await new Promise((ok) => p.stdout.once("data", (d) => ok(JSON.parse(String(d)))));
const c = await KernelClient.connect({ socket: info.socket, identity: loadIdentity(join(home, "admin.identity")), tokens: [readFileSync(join(home, "admin.token"), "utf8")], reconnect: false, shm: false });
const call = () => c.call("bench.noop", "kernel://");
for (let i = 0; i < 2000; i++) await call();
let st;
if (out) { st = spawn("strace", [...(process.env.FULL ? ["-tt"] : ["-c"]), "-f", "-p", String(p.pid), "-o", out], { stdio: "ignore" }); await new Promise((r) => setTimeout(r, 1500)); }
const lat = [];
for (let i = 0; i < N; i++) { const t = process.hrtime.bigint(); await call(); lat.push(Number(process.hrtime.bigint() - t) / 1000); }
if (st) { st.kill("SIGINT"); await new Promise((r) => st.once("exit", r)); }
lat.sort((a, b) => a - b);
console.log(JSON.stringify({ root, n: N, p50: Math.round(lat[N >> 1]), p99: Math.round(lat[Math.floor(N * 0.99)]), p999: Math.round(lat[Math.floor(N * 0.999)]) }));
await c.close(); p.kill("SIGTERM"); await new Promise((r) => p.once("exit", r)); rmSync(home, { recursive: true, force: true });
