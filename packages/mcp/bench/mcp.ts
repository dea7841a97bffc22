/**
 * `npm run bench:mcp [-- --calls N --json --profile DIR]`: an MCP tool call through `kpip mcp` (the gateway:
 * MCP over stdio → one KPIP request over the Unix socket → capability check → audit record
 * committed → answer) beside a plain MCP SDK stdio server whose tool does nothing (the
 * baseline), a bare MCP SDK server whose tool makes the same KPIP request (the floor: what any
 * server asking the kernel pays) and that KPIP request alone. All MCP servers are driven by the
 * MCP SDK's own client over stdio, in interleaved rounds; p50 with one call in flight,
 * throughput with 16 in flight. Target: the gateway's p50 at most 1.5× the baseline's.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { KernelClient } from "@kpip/client";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { KernelHome, MAIN } from "../test/harness.js";

const argv = process.argv.slice(2);
const json = argv.includes("--json");
const callsArg = argv.indexOf("--calls");
const CALLS = callsArg >= 0 ? Number(argv[callsArg + 1]) : 2000;
// --profile DIR: the three MCP servers run with --cpu-prof, their profiles written to DIR when they exit.
const profileArg = argv.indexOf("--profile");
const PROFILE = profileArg >= 0 ? argv[profileArg + 1] : undefined;
const CONCURRENCY = 16;

interface Figures {
  p50Us: number;
  p99Us: number;
  seqPerSec: number;
  concPerSec: number;
}

/** A tool call through an MCP client. */
const toolCall = (client: Client, name: string) => async () => {
  const r = await client.callTool({ name, arguments: {} });
  if (r.isError) throw new Error(`${name} failed: ${JSON.stringify(r.content)}`);
};

/** Rounds of calls, each subject in turn: the shared machine's load drifts, and this spreads it over all of them. */
const ROUNDS = 10;

/**
 * p50/p99 with one call in flight, and calls/s with one and with CONCURRENCY in flight, for
 * every subject, measured in interleaved rounds after a warm-up of each.
 */
async function measureAll(subjects: Record<string, () => Promise<unknown>>): Promise<Record<string, Figures>> {
  const names = Object.keys(subjects);
  const lat = new Map(names.map((n) => [n, [] as number[]]));
  const seqNs = new Map(names.map((n) => [n, 0n]));
  const concNs = new Map(names.map((n) => [n, 0n]));
  for (const n of names) for (let i = 0; i < Math.min(500, CALLS); i++) await (subjects[n] as () => Promise<unknown>)();
  const per = Math.max(1, Math.floor(CALLS / ROUNDS));
  for (let r = 0; r < ROUNDS; r++) {
    for (const n of names) {
      const one = subjects[n] as () => Promise<unknown>;
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < per; i++) {
        const s = process.hrtime.bigint();
        await one();
        lat.get(n)?.push(Number(process.hrtime.bigint() - s) / 1000);
      }
      seqNs.set(n, (seqNs.get(n) ?? 0n) + process.hrtime.bigint() - t0);
      let next = 0;
      const t1 = process.hrtime.bigint();
      await Promise.all(
        Array.from({ length: CONCURRENCY }, async () => {
          while (next++ < per) await one();
        }),
      );
      concNs.set(n, (concNs.get(n) ?? 0n) + process.hrtime.bigint() - t1);
    }
  }
  const out: Record<string, Figures> = {};
  for (const n of names) {
    const l = (lat.get(n) ?? []).sort((a, b) => a - b);
    const at = (q: number) => Math.round(l[Math.min(l.length - 1, Math.floor(q * l.length))] as number);
    const rate = (ns: bigint | undefined) => Math.round((per * ROUNDS) / (Number(ns) / 1e9));
    out[n] = { p50Us: at(0.5), p99Us: at(0.99), seqPerSec: rate(seqNs.get(n)), concPerSec: rate(concNs.get(n)) };
  }
  return out;
}

async function stdioClient(command: string, args: string[]): Promise<Client> {
  const c = new Client({ name: "bench-host", version: "0.0.0" });
  await c.connect(new StdioClientTransport({ command, args, stderr: "ignore" }));
  return c;
}

const k = new KernelHome();
let baseline: Client | undefined;
let gateway: Client | undefined;
let floor: Client | undefined;
try {
  baseline = await stdioClient(process.execPath, [
    ...(PROFILE ? ["--cpu-prof", "--cpu-prof-dir", PROFILE] : []),
    fileURLToPath(new URL("./noop-server.js", import.meta.url)),
  ]);
  await k.start();
  const files = await k.persona("bench", [{ ops: ["system.describe", "system.health"], targets: ["kernel://"] }]);
  gateway = await stdioClient(process.execPath, [
    ...(PROFILE ? ["--cpu-prof", "--cpu-prof-dir", PROFILE] : []),
    MAIN,
    "mcp",
    "--home",
    k.home,
    "--identity",
    files.identityFile,
    "--token",
    `@${files.tokenFile}`,
  ]);
  // The same KPIP request from a bare MCP SDK server: the floor of any gateway.
  floor = await stdioClient(process.execPath, [
    ...(PROFILE ? ["--cpu-prof", "--cpu-prof-dir", PROFILE] : []),
    fileURLToPath(new URL("./kpip-server.js", import.meta.url)),
    join(k.home, "kernel.sock"),
    files.identityFile,
    files.tokenFile,
  ]);
  // The KPIP request alone (what the gateway adds to an MCP call), as the same persona.
  const direct = await KernelClient.connect({
    socket: join(k.home, "kernel.sock"),
    identity: files.identityFile,
    tokens: [readFileSync(files.tokenFile, "utf8")],
  });
  const f = await measureAll({
    base: toolCall(baseline, "noop"),
    gw: toolCall(gateway, "system_health"),
    bare: toolCall(floor, "health"),
    kpip: () => direct.call("system.health", "kernel://"),
  });
  await direct.close();
  const { base, gw, bare, kpip: kpipOnly } = f as Record<"base" | "gw" | "bare" | "kpip", Figures>;
  const ratio = gw.p50Us / base.p50Us;
  if (json)
    process.stdout.write(
      `${JSON.stringify({ calls: CALLS, baseline: base, gateway: gw, floor: bare, kpip: kpipOnly, p50Ratio: ratio })}\n`,
    );
  else {
    const row = (n: string, f: Figures) => `| ${n} | ${f.p50Us} | ${f.p99Us} | ${f.seqPerSec} | ${f.concPerSec} |`;
    process.stdout.write(
      [
        `MCP tool call over stdio, ${CALLS} calls each in ${ROUNDS} interleaved rounds (p50/p99 in µs with 1 in flight; calls/s with 1 and ${CONCURRENCY} in flight)`,
        "",
        "| server | p50 µs | p99 µs | calls/s, 1 | calls/s, 16 |",
        "|---|---:|---:|---:|---:|",
        row("plain MCP SDK stdio server, no-op tool (baseline)", base),
        row("kpip mcp → kernel system.health (checked + audited)", gw),
        row("floor: a bare MCP SDK server whose tool makes the same KPIP request", bare),
        row("for reference: the same system.health through @kpip/client, no MCP", kpipOnly),
        "",
        `gateway p50 / baseline p50 = ${ratio.toFixed(2)}× (target ≤ 1.5×: ${ratio <= 1.5 ? "met" : "not met"}); floor p50 / baseline p50 = ${(bare.p50Us / base.p50Us).toFixed(2)}×; gateway p50 / floor p50 = ${(gw.p50Us / bare.p50Us).toFixed(2)}×`,
        "",
      ].join("\n"),
    );
  }
} finally {
  await gateway?.close().catch(() => {});
  await floor?.close().catch(() => {});
  await baseline?.close().catch(() => {});
  await k.dispose();
}
