/** The bench's server processes: each started from a script beside this one, and all killed at the end. */
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { serverEnv } from "../proc.js";

export const here = (f: string) => fileURLToPath(new URL(f, import.meta.url));

/** Every process started, for the final kill. */
export const children: ChildProcess[] = [];

/** Starts `script` and waits for the JSON line it prints when ready (its socket, pid, ...). */
export async function startServer(
  script: string,
  args: string[],
): Promise<{ proc: ChildProcess; info: Record<string, unknown> }> {
  const proc = spawn(process.execPath, [here(script), ...args], { stdio: ["ignore", "pipe", "inherit"], env: serverEnv() });
  children.push(proc);
  const info = await new Promise<Record<string, unknown>>((resolve, reject) => {
    let out = "";
    proc.stdout?.on("data", (d) => {
      out += d;
      const nl = out.indexOf("\n");
      if (nl >= 0) resolve(JSON.parse(out.slice(0, nl)) as Record<string, unknown>);
    });
    proc.once("exit", (c) => reject(new Error(`${script} exited with ${c}`)));
  });
  return { proc, info };
}

/** SIGTERM, and wait for the exit. */
export async function stopServer(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null) return;
  const exited = new Promise((r) => proc.once("exit", r));
  proc.kill("SIGTERM");
  await exited;
}

export { rssMb } from "../proc.js";
