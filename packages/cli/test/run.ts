import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { KernelClient, loadIdentity } from "@kpip/client";
import { outputIncludes } from "@kpip/protocol/testing";

/** The installed command: the bundled entry, which hands every command it does not bundle to dist/src/main.js. */
export const MAIN = fileURLToPath(new URL("../bundle/kpip.cjs", import.meta.url));

/** The command line's dispatch, for a {@link CommandWorker} (`@kpip/protocol/testing`) that runs many command lines in one worker. */
export const DISPATCH = new URL("../src/dispatch.js", import.meta.url).href;

/** Runs `kpip <args>` (the installed command) to its end. */
export const kpip = (args: string[], env: NodeJS.ProcessEnv = {}) => {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: "utf8", env: { ...process.env, ...env } });
  return { code: r.status, out: r.stdout, err: r.stderr };
};

/** `kpip kernel` in a child process on `home`; resolves once it says it is running, rejects if it exits first. */
export async function runKernel(home: string, ...extra: string[]): Promise<ChildProcess> {
  const k = spawn(process.execPath, [MAIN, "kernel", "--home", home, "--log-level", "silent", ...extra], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  await outputIncludes(k, "is running");
  return k;
}

/**
 * A kernel (sandbox none) in a child process on `home`, embedded as a program would, to be
 * SIGKILLed by the test; its clock `clockAhead` ms ahead of the host's (`KernelOptions.clock`).
 * Resolves once it serves.
 */
export async function childKernel(home: string, clockAhead = 0): Promise<ChildProcess> {
  const code = `const { Kernel } = await import(process.argv[1]);
const ahead = Number(process.argv[3]);
const k = new Kernel({ home: process.argv[2], logLevel: "silent", sandbox: "none", ...(ahead ? { clock: () => Date.now() + ahead } : {}) });
await k.start();
process.stdout.write("ready\\n");
setInterval(() => {}, 1000);`;
  const args = ["--input-type=module", "-e", code, import.meta.resolve("@kpip/kernel"), home, String(clockAhead)];
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"] });
  await outputIncludes(child, "ready");
  return child;
}

/** `kpip token mint` for `persona`, allowed `allow` (OPS:TARGETS) for an hour; `rest` after (--out, --json, the home's flags). */
export const mintArgs = (persona: string, allow: string, ...rest: string[]): string[] => [
  "token",
  "mint",
  "--persona",
  persona,
  "--allow",
  allow,
  "--ttl",
  "1h",
  ...rest,
];

/** The admin persona's client to the kernel serving `home` (its socket, identity and root token in the home). */
export function connectAdmin(home: string): Promise<KernelClient> {
  return KernelClient.connect({
    socket: join(home, "kernel.sock"),
    identity: loadIdentity(join(home, "admin.identity")),
    tokens: [readFileSync(join(home, "admin.token"), "utf8").trim()],
    reconnect: false,
  });
}
