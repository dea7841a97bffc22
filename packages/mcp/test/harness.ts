import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { KernelClient } from "@kpip/client";
import { generateIdentity, type Right, serializeIdentity } from "@kpip/protocol";
import { CommandWorker, outputIncludes } from "@kpip/protocol/testing";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { type CallToolResult, McpError } from "@modelcontextprotocol/sdk/types.js";
import { type GatewayOptions, McpGateway } from "../src/gateway.js";

/** The kpip command (the MCP package never imports the kernel: it runs as a process). */
export const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

/** The command line's dispatch, for a `CommandWorker` (`@kpip/protocol/testing`): many short command lines in one worker. */
export const DISPATCH = new URL("../../../cli/dist/src/dispatch.js", import.meta.url).href;

/** The name and version the test host announces: the audit must name it. */
export const HOST = { name: "test-host", version: "1.2.3" };

/** `kpip <args>` to completion. */
export function kpip(args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: "utf8" });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** Runs the audit reads of {@link KernelHome.audit}: one worker thread for the file, not a process each. */
let auditWorker: CommandWorker | undefined;

/**
 * Kernels started here and still running. Killed when this process exits however it exits: a
 * kernel left behind by a test or probe that threw holds this process's stderr open, and
 * whoever reads it (the test runner, a `| tail`) then waits for ever.
 */
const liveKernels = new Set<ChildProcess>();
process.on("exit", () => {
  for (const k of liveKernels) k.kill("SIGKILL");
});

/** A kernel in its own process on a temp home; it can be killed and started again on the same home. */
export class KernelHome {
  readonly home = mkdtempSync(join(tmpdir(), "kpip-mcp-"));
  private child: ChildProcess | undefined;

  /** `config`: kernel settings written to the home's config.json (e.g. lower bounds for a test). */
  constructor(config?: Record<string, unknown>) {
    if (config) writeFileSync(join(this.home, "config.json"), JSON.stringify(config), { mode: 0o600 });
  }

  async start(): Promise<void> {
    const k = spawn(process.execPath, [MAIN, "kernel", "--home", this.home, "--log-level", "silent"], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    this.child = k;
    liveKernels.add(k);
    k.once("exit", () => liveKernels.delete(k));
    await outputIncludes(k, "is running");
  }

  async kill(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once("exit", r));
    c.kill("SIGKILL");
    await exited;
  }

  /** Registers `id` through the kernel and mints it a token; writes both where `kpip mcp` reads them. */
  async persona(id: string, rights: Right[]): Promise<{ identityFile: string; tokenFile: string }> {
    const admin = await KernelClient.connect({
      socket: join(this.home, "kernel.sock"),
      identity: join(this.home, "admin.identity"),
      tokens: [readFileSync(join(this.home, "admin.token"), "utf8")],
      reconnect: false,
    });
    try {
      const identity = generateIdentity(id);
      await admin.personas.register(id, identity.publicKey);
      const m = await admin.tokens.mint(id, { rights, ttlMs: 3_600_000 });
      const identityFile = join(this.home, `${id}.identity`);
      const tokenFile = join(this.home, `${id}.token`);
      writeFileSync(identityFile, serializeIdentity(identity), { mode: 0o600 });
      writeFileSync(tokenFile, Buffer.from(m.token).toString("base64url"), { mode: 0o600 });
      return { identityFile, tokenFile };
    } finally {
      await admin.close();
    }
  }

  /**
   * `kpip audit query --persona P --json`: the persona's audit records, one object each, read by
   * the CLI in a worker thread. Not in this thread: the gateway under test often runs here, and a
   * test polling the record would stop it for as long as each read takes (seconds on a busy
   * machine), long enough to time the test out.
   */
  async audit(persona: string): Promise<
    {
      op: string | null;
      target: string | null;
      phase: string;
      status: string | null;
      execution?: string;
      requestId: number | null;
    }[]
  > {
    auditWorker ??= new CommandWorker(DISPATCH);
    const r = await auditWorker.run(["audit", "query", "--home", this.home, "--persona", persona, "--limit", "10000", "--json"]);
    if (r.code !== 0) throw new Error(`kpip audit query failed: ${r.err}`);
    return r.out
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l));
  }

  async dispose(): Promise<void> {
    await this.kill();
    rmSync(this.home, { recursive: true, force: true });
  }
}

/** An MCP SDK client (the host) talking to `kpip mcp` over stdio. */
export async function stdioHost(k: KernelHome, files: { identityFile: string; tokenFile: string }, extra: string[] = []) {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [MAIN, "mcp", "--home", k.home, "--identity", files.identityFile, "--token", `@${files.tokenFile}`, ...extra],
    stderr: "pipe",
  });
  const client = new Client(HOST);
  await client.connect(transport);
  return client;
}

/** The first text item of a tool result. */
export function text(r: CallToolResult): string {
  const t = r.content.find((c) => c.type === "text");
  return t && t.type === "text" ? t.text : "";
}

export { until } from "@kpip/protocol/testing";

/** The McpError `p` rejects with; fails when it resolves or rejects with anything else. */
export async function mcpError(p: Promise<unknown>): Promise<McpError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof McpError, `expected an McpError, got ${e}`);
    return e;
  }
  assert.fail("it succeeded");
}

/** A gateway in this process (its counts and memory can be read) acting as the persona of `files`. */
export async function gatewayOn(
  k: KernelHome,
  files: { identityFile: string; tokenFile: string },
  opts: GatewayOptions = {},
): Promise<{ gateway: McpGateway; client: KernelClient; close(): Promise<void> }> {
  const client = await KernelClient.connect({
    socket: join(k.home, "kernel.sock"),
    identity: files.identityFile,
    tokens: [readFileSync(files.tokenFile, "utf8")],
    reconnect: false,
  });
  const gateway = await McpGateway.open(client, opts).catch(async (e) => {
    await client.close();
    throw e;
  });
  return {
    gateway,
    client,
    close: async () => {
      await gateway.close();
      await client.close();
    },
  };
}
