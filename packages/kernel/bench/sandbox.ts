/**
 * `npm run bench:sandbox [-- --n 30 --json]`: what the process sandbox costs. For each of
 * `--sandbox bwrap` and `--sandbox none`, one kernel on a temp home, measured sequentially
 * from the admin's client: a command op (compute.submit op://command/true → op.result
 * answered), and an agent (agent.spawn agent://true/<n> → its "exited" event). p50 and p90 in
 * milliseconds. A quick run: a few dozen processes per row.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KernelClient } from "@kpip/client";
import { Kernel } from "../src/index.js";

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const n = arg("n", 30);
const json = process.argv.includes("--json");

const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))] ?? 0;

async function run(mode: "bwrap" | "none"): Promise<Record<string, number[]>> {
  const home = mkdtempSync(join(tmpdir(), "kpip-bench-sandbox-"));
  const k = new Kernel({ home, logLevel: "silent", sandbox: mode });
  await k.start();
  try {
    if (mode === "bwrap" && (k.status().sandbox as { usable: boolean }).usable === false)
      throw new Error("the sandbox is not usable here: install bubblewrap");
    const c = await KernelClient.connect({
      socket: k.socketPath,
      identity: k.adminIdentity,
      tokens: [readFileSync(k.adminToken, "utf8").trim()],
      reconnect: false,
    });
    const out: Record<string, number[]> = { command: [], agent: [] };
    const events = await c.events.subscribe("topic://kernel/agents/**");
    const it = events[Symbol.asyncIterator]();
    const opEvents = (await c.events.subscribe("topic://kernel/ops/**"))[Symbol.asyncIterator]();
    for (let i = 0; i < n + 3; i++) {
      let t = performance.now();
      const d = await c.compute.command("true");
      for (;;) {
        const e = await opEvents.next();
        if ((e.value?.data as { op?: string } | undefined)?.op === d.op) break;
      }
      const command = performance.now() - t;
      t = performance.now();
      await c.agents.spawn("true", `b${i}`, { args: [], rights: [], lifetimeMs: 60_000 });
      for (;;) {
        const e = await it.next();
        if ((e.value?.data as { state?: string } | undefined)?.state !== "running") break;
      }
      const agent = performance.now() - t;
      if (i >= 3) {
        out.command?.push(command);
        out.agent?.push(agent);
      }
    }
    await c.close();
    return out;
  } finally {
    await k.stop();
    rmSync(home, { recursive: true, force: true });
  }
}

const rows: { name: string; p50: number; p90: number }[] = [];
for (const mode of ["none", "bwrap"] as const) {
  const r = await run(mode);
  for (const [what, xs] of Object.entries(r)) rows.push({ name: `${what}.${mode}`, p50: pct(xs, 0.5), p90: pct(xs, 0.9) });
}
for (const row of rows) {
  if (json) console.log(JSON.stringify({ name: row.name, unit: "ms", p50: +row.p50.toFixed(2), p90: +row.p90.toFixed(2) }));
  else console.log(`${row.name.padEnd(16)} p50 ${row.p50.toFixed(2).padStart(7)} ms   p90 ${row.p90.toFixed(2).padStart(7)} ms`);
}
const ratio = (what: string) =>
  (rows.find((r) => r.name === `${what}.bwrap`)?.p50 ?? 0) / (rows.find((r) => r.name === `${what}.none`)?.p50 ?? 1);
if (!json) console.log(`sandboxed/unsandboxed p50: command ${ratio("command").toFixed(2)}×, agent ${ratio("agent").toFixed(2)}×`);
