import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type ConnectOptions, KernelClient } from "../src/index.js";

const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

/** A kernel in its own process on a temp home (the client package never imports the kernel). */
export class KernelProcess {
  child: ChildProcess | undefined;
  readonly home: string;
  constructor(
    readonly args: string[] = [],
    home?: string,
  ) {
    this.home = home ?? mkdtempSync(join(tmpdir(), "kpip-client-"));
  }
  get socket(): string {
    return join(this.home, "kernel.sock");
  }
  async start(): Promise<void> {
    const child = spawn(process.execPath, [MAIN, "kernel", "--home", this.home, "--log-level", "silent", ...this.args], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    this.child = child;
    await new Promise<void>((resolve, reject) => {
      let out = "";
      child.stdout?.on("data", (d) => {
        out += d;
        if (out.includes("is running")) resolve();
      });
      child.once("exit", (c) => reject(new Error(`kernel exited with ${c}`)));
    });
  }
  signal(sig: NodeJS.Signals): void {
    this.child?.kill(sig);
  }
  async kill(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill("SIGCONT");
    c.kill("SIGKILL");
    await new Promise((r) => c.once("exit", r));
  }
  async stop(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill("SIGINT");
    await new Promise((r) => c.once("exit", r));
  }
  options(extra: Partial<ConnectOptions> = {}): ConnectOptions {
    return {
      socket: this.socket,
      identity: join(this.home, "admin.identity"),
      tokens: [readFileSync(join(this.home, "admin.token"), "utf8")],
      reconnectBackoff: { initialMs: 20, maxMs: 200 },
      ...extra,
    };
  }
  connect(extra: Partial<ConnectOptions> = {}): Promise<KernelClient> {
    return KernelClient.connect(this.options(extra));
  }
  async dispose(): Promise<void> {
    await this.kill();
    rmSync(this.home, { recursive: true, force: true });
  }
}

export async function until<T>(f: () => T | Promise<T>, ms = 30_000, what = "condition"): Promise<NonNullable<T>> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v as NonNullable<T>;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
