/**
 * `npm run bench:sandbox [-- --n 30 --json]`: what the process sandbox costs. For each of
 * `--sandbox bwrap` and `--sandbox none`, one kernel on a temp home, measured sequentially
 * from the admin's client: a command op (compute.submit op://command/true → op.result
 * answered), and an agent (agent.spawn agent://true/<n> → its "exited" event). p50 and p90 in
 * milliseconds. A quick run: a few dozen processes per row. Then `prepare.bwrap`: what the
 * kernel itself spends on one launch before bubblewrap runs (Sandbox.launch: the checks of the
 * mount table, the read paths and the secrets' links, the scratch directory, the command line).
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KernelClient } from "@kpip/client";
import { Kernel } from "../src/index.js";
import { Sandbox } from "../src/sandbox/sandbox.js";

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
    // An agent's events are on its own persona's topic (below the spawner's: PROTOCOL §9.6).
    const events = await c.events.subscribe("topic://kernel/**");
    const it = events[Symbol.asyncIterator]();
    const opEvents = (await c.events.subscribe(`topic://kernel/personas/${c.persona}/ops/**`))[Symbol.asyncIterator]();
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
        if (!e.value?.topic.includes("/agents/")) continue;
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

/** Sandbox.launch alone (no process is started), as the kernel configures it for a home: milliseconds per call. */
function prepare(): number[] {
  const home = mkdtempSync(join(tmpdir(), "kpip-bench-sandbox-"));
  const scratchRoot = `${home}-scratch`;
  // Not a literal in the call: the same bench builds against a Sandbox without `secrets` (a before/after measure).
  const config = {
    mode: "bwrap" as const,
    readPaths: [tmpdir()],
    scratchRoot,
    uid: 65534,
    hidden: [
      { path: home, what: "kernel home", tree: true },
      { path: scratchRoot, what: "scratch root", tree: true },
    ],
    secrets: ["kernel.key", "token-keys.json", "admin.identity", "admin.token", "kernel.db", "kernel.db-wal"].map((f) => ({
      path: join(home, f),
      what: f,
    })),
    limits: { processes: 64, memoryBytes: 0, cpuSeconds: 0, fileBytes: 0 },
  };
  const s = new Sandbox(config);
  const xs: number[] = [];
  try {
    for (let i = 0; i < 20 * n + 50; i++) {
      const t = performance.now();
      const l = s.launch({ executable: "true", args: [], env: {}, network: false, limits: s.config.limits, extra: [] });
      const dt = performance.now() - t;
      l.cleanup();
      if (i >= 50) xs.push(dt);
    }
  } finally {
    s.close(true);
    rmSync(home, { recursive: true, force: true });
  }
  return xs;
}

const rows: { name: string; p50: number; p90: number }[] = [];
for (const mode of ["none", "bwrap"] as const) {
  const r = await run(mode);
  for (const [what, xs] of Object.entries(r)) rows.push({ name: `${what}.${mode}`, p50: pct(xs, 0.5), p90: pct(xs, 0.9) });
}
const p = prepare();
rows.push({ name: "prepare.bwrap", p50: pct(p, 0.5), p90: pct(p, 0.9) });
for (const row of rows) {
  if (json) console.log(JSON.stringify({ name: row.name, unit: "ms", p50: +row.p50.toFixed(2), p90: +row.p90.toFixed(2) }));
  else console.log(`${row.name.padEnd(16)} p50 ${row.p50.toFixed(2).padStart(7)} ms   p90 ${row.p90.toFixed(2).padStart(7)} ms`);
}
const ratio = (what: string) =>
  (rows.find((r) => r.name === `${what}.bwrap`)?.p50 ?? 0) / (rows.find((r) => r.name === `${what}.none`)?.p50 ?? 1);
if (!json) console.log(`sandboxed/unsandboxed p50: command ${ratio("command").toFixed(2)}×, agent ${ratio("agent").toFixed(2)}×`);
