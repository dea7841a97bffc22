/**
 * `npm run bench:mcp [-- --calls N --json]`: an MCP tool call through `kpip mcp` (the gateway:
 * MCP over stdio → one KPIP request over the Unix socket → capability check → audit record
 * committed → answer) beside a plain MCP SDK stdio server whose tool does nothing. Both are
 * driven by the MCP SDK's own client over stdio; p50 with one call in flight, throughput with
 * 16 in flight. Target: the gateway's p50 at most 1.5× the baseline's.
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

async function measure(one: () => Promise<unknown>): Promise<Figures> {
  for (let i = 0; i < Math.min(500, CALLS); i++) await one();
  const lat: number[] = [];
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < CALLS; i++) {
    const s = process.hrtime.bigint();
    await one();
    lat.push(Number(process.hrtime.bigint() - s) / 1000);
  }
  const seqSec = Number(process.hrtime.bigint() - t0) / 1e9;
  lat.sort((a, b) => a - b);
  let next = 0;
  const t1 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next++ < CALLS) await one();
    }),
  );
  const concSec = Number(process.hrtime.bigint() - t1) / 1e9;
  const at = (q: number) => Math.round(lat[Math.min(lat.length - 1, Math.floor(q * lat.length))] as number);
  return { p50Us: at(0.5), p99Us: at(0.99), seqPerSec: Math.round(CALLS / seqSec), concPerSec: Math.round(CALLS / concSec) };
}

async function stdioClient(command: string, args: string[]): Promise<Client> {
  const c = new Client({ name: "bench-host", version: "0.0.0" });
  await c.connect(new StdioClientTransport({ command, args, stderr: "ignore" }));
  return c;
}

const k = new KernelHome();
let baseline: Client | undefined;
let gateway: Client | undefined;
try {
  baseline = await stdioClient(process.execPath, [fileURLToPath(new URL("./noop-server.js", import.meta.url))]);
  const base = await measure(toolCall(baseline, "noop"));
  await k.start();
  const files = await k.persona("bench", [{ ops: ["system.describe", "system.health"], targets: ["kernel://"] }]);
  gateway = await stdioClient(process.execPath, [
    MAIN,
    "mcp",
    "--home",
    k.home,
    "--identity",
    files.identityFile,
    "--token",
    `@${files.tokenFile}`,
  ]);
  const gw = await measure(toolCall(gateway, "system_health"));
  // The KPIP request alone (what the gateway adds to an MCP call), as the same persona.
  const direct = await KernelClient.connect({
    socket: join(k.home, "kernel.sock"),
    identity: files.identityFile,
    tokens: [readFileSync(files.tokenFile, "utf8")],
  });
  const kpipOnly = await measure(() => direct.call("system.health", "kernel://"));
  await direct.close();
  const ratio = gw.p50Us / base.p50Us;
  if (json)
    process.stdout.write(`${JSON.stringify({ calls: CALLS, baseline: base, gateway: gw, kpip: kpipOnly, p50Ratio: ratio })}\n`);
  else {
    const row = (n: string, f: Figures) => `| ${n} | ${f.p50Us} | ${f.p99Us} | ${f.seqPerSec} | ${f.concPerSec} |`;
    process.stdout.write(
      [
        `MCP tool call over stdio, ${CALLS} calls (p50/p99 in µs with 1 in flight; calls/s with 1 and ${CONCURRENCY} in flight)`,
        "",
        "| server | p50 µs | p99 µs | calls/s, 1 | calls/s, 16 |",
        "|---|---:|---:|---:|---:|",
        row("plain MCP SDK stdio server, no-op tool (baseline)", base),
        row("kpip mcp → kernel system.health (checked + audited)", gw),
        row("for reference: the same system.health through @kpip/client, no MCP", kpipOnly),
        "",
        `gateway p50 / baseline p50 = ${ratio.toFixed(2)}× (target ≤ 1.5×: ${ratio <= 1.5 ? "met" : "not met"})`,
        "",
      ].join("\n"),
    );
  }
} finally {
  await gateway?.close().catch(() => {});
  await baseline?.close().catch(() => {});
  await k.dispose();
}
