/** What the A/B benches share: their arguments, a record shaped like a `bench.noop` request's, a checkout's bench kernel. */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { KernelClient } from "@kpip/client";
import { encodeIntent, intentHash } from "@kpip/protocol";
import type { AuditEntry } from "../../src/audit/log.js";

/** `<other checkout> [--records N] [--rounds N]`; exits with the usage line when no checkout is named. */
export function abArgs(
  script: string,
  dflt: { records: number; rounds: number },
): { other: string; here: string; records: number; rounds: number } {
  const args = process.argv.slice(2);
  const other = args.find((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
  const opt = (name: string, d: number) => {
    const at = args.indexOf(name);
    return at >= 0 ? Number(args[at + 1]) : d;
  };
  if (!other) {
    process.stderr.write(`usage: ${script} <other kpip checkout, built> [--records N] [--rounds N]\n`);
    process.exit(2);
  }
  return {
    other,
    here: resolve(fileURLToPath(new URL("../../../../../", import.meta.url))),
    records: opt("--records", dflt.records),
    rounds: opt("--rounds", dflt.rounds),
  };
}

const intent = encodeIntent({ op: "bench.noop", target: "kernel://", args: {} });
const hash = intentHash(intent);

/** The audit entry of the i-th `bench.noop` request. */
export const noopEntry = (i: number): AuditEntry => ({
  session: "sess-0123456789abcdef",
  persona: "admin",
  phase: "complete",
  requestId: i,
  op: "bench.noop",
  target: "kernel://",
  intentHash: hash,
  intent,
  caps: "bench.noop@kernel://",
  status: "SUCCESS",
  durationUs: 40 + (i % 50),
  traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
  detail: '{"status":"SUCCESS"}',
});

/** The kernel process's user + system CPU so far, in µs (Linux clock ticks of 10 ms). */
export function kernelCpuUs(pid: number): number {
  const f = (readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1] ?? "").split(" ");
  return (Number(f[11]) + Number(f[12])) * 10_000;
}

/** A checkout's bench kernel in its own process on a temp home, with that checkout's own client connected as admin. */
export interface CheckoutKernel {
  readonly client: KernelClient;
  readonly pid: number;
  readonly home: string;
  /** Its Unix socket (for more clients: the home holds the admin's identity and token). */
  readonly socket: string;
  /** SIGTERM, and the kernel's exit (a clean stop: its home's files final). */
  stop(): Promise<void>;
  /** Kills what is left and removes the home. */
  remove(): void;
}

/**
 * Starts `root`'s side-by-side/kernel-server.js and connects `root`'s `@kpip/client` to it (no reconnect, no shm);
 * `launch` adds node flags before the script (e.g. a preload) and variables to the kernel's environment.
 */
export async function checkoutKernel(
  root: string,
  prefix: string,
  launch: { nodeArgs?: string[]; env?: Record<string, string> } = {},
): Promise<CheckoutKernel> {
  const { KernelClient, loadIdentity } = (await import(
    pathToFileURL(join(root, "packages/client/dist/src/index.js")).href
  )) as typeof import("@kpip/client");
  const home = mkdtempSync(join(tmpdir(), prefix));
  const server = join(root, "packages/kernel/dist/bench/side-by-side/kernel-server.js");
  const p = spawn(process.execPath, [...(launch.nodeArgs ?? []), server, "--home", home], {
    stdio: ["ignore", "pipe", "inherit"],
    env: launch.env ? { ...process.env, ...launch.env } : process.env,
  });
  const remove = () => {
    if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
    rmSync(home, { recursive: true, force: true });
  };
  try {
    const info = await new Promise<{ socket: string; pid: number }>((ok, fail) => {
      p.stdout.once("data", (d) => ok(JSON.parse(String(d)) as { socket: string; pid: number }));
      p.once("exit", (c) => fail(new Error(`${server} exited ${c}`)));
    });
    const client = await KernelClient.connect({
      socket: info.socket,
      identity: loadIdentity(join(home, "admin.identity")),
      tokens: [readFileSync(join(home, "admin.token"), "utf8")],
      reconnect: false,
      shm: false,
    });
    return {
      client,
      pid: info.pid,
      home,
      socket: info.socket,
      stop: async () => {
        if (p.exitCode !== null || p.signalCode !== null) return;
        p.kill("SIGTERM");
        await new Promise((r) => p.once("exit", r));
      },
      remove,
    };
  } catch (e) {
    remove();
    throw e;
  }
}

/** A checkout's own audit log and store classes (its built dist), to measure them side by side. */
export async function checkoutAudit(root: string): Promise<{
  AuditLog: typeof import("../../src/audit/log.js").AuditLog;
  SqliteStore: typeof import("../../src/store/sqlite.js").SqliteStore;
}> {
  const dist = join(root, "packages/kernel/dist/src");
  const { AuditLog } = (await import(pathToFileURL(join(dist, "audit/log.js")).href)) as typeof import("../../src/audit/log.js");
  const { SqliteStore } = (await import(
    pathToFileURL(join(dist, "store/sqlite.js")).href
  )) as typeof import("../../src/store/sqlite.js");
  return { AuditLog, SqliteStore };
}
