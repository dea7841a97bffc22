import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { KernelClient } from "@kpip/client";
import { generateIdentity, type Limits, type Right } from "@kpip/protocol";
import { rssMb } from "../proc.js";
import type { AttackContext } from "./attack.js";

const MAIN = fileURLToPath(new URL("../../../../cli/dist/src/main.js", import.meta.url));

/** A kernel in its own process on a temp home, as an operator runs it (`kpip kernel`), logging at info. */
export class KernelProcess {
  readonly home = mkdtempSync(join(tmpdir(), "kpip-abuse-"));
  readonly socket = join(this.home, "kernel.sock");
  private child: ChildProcess | undefined;
  exit: string | undefined;
  /** Bytes the kernel wrote to stdout and stderr (its log). */
  logBytes = 0;
  admin: KernelClient | undefined;

  async start(extraFlags: string[] = []): Promise<void> {
    const child = spawn(process.execPath, [MAIN, "kernel", "--home", this.home, "--log-level", "info", ...extraFlags], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    child.once("exit", (code, signal) => {
      this.exit = `kernel exited (code ${code}, signal ${signal})`;
    });
    child.stderr?.on("data", (d: Buffer) => {
      this.logBytes += d.length;
    });
    await new Promise<void>((resolve, reject) => {
      let out = "";
      child.stdout?.on("data", (d: Buffer) => {
        this.logBytes += d.length;
        if (out.length < 100_000) out += d;
        if (out.includes("is running")) resolve();
      });
      child.once("exit", () => reject(new Error(this.exit)));
    });
    this.admin = await KernelClient.connect({
      socket: this.socket,
      identity: join(this.home, "admin.identity"),
      tokens: [readFileSync(join(this.home, "admin.token"), "utf8")],
      reconnect: false,
    });
  }

  get pid(): number {
    return this.child?.pid ?? 0;
  }

  /** Resident set size in bytes (Linux), 0 once gone. */
  rss(): number {
    return rssMb(this.pid) * 1024 * 1024;
  }

  /** Bytes of the home's database and its WAL. */
  dbBytes(): number {
    let n = 0;
    for (const f of ["kernel.db", "kernel.db-wal"]) {
      try {
        n += statSync(join(this.home, f)).size;
      } catch {
        // not there (yet)
      }
    }
    return n;
  }

  /** Registers a persona through the admin (persona.register) and mints it a token. */
  async persona(id: string, rights: Right[], limits?: Limits) {
    const admin = this.admin as KernelClient;
    const identity = generateIdentity(id);
    await admin.personas.register(id, identity.publicKey);
    const m = await admin.tokens.mint(id, { rights, ttlMs: 3_600_000, maxLifetimeMs: 3_600_000, ...(limits ? { limits } : {}) });
    return {
      identity,
      token: m.token,
      connect: (tokens: Uint8Array[] = [m.token]) =>
        KernelClient.connect({ socket: this.socket, identity, tokens, reconnect: false, maxAttempts: 1 }),
    };
  }

  context(signal: AbortSignal): AttackContext {
    return {
      socket: this.socket,
      home: this.home,
      pid: this.pid,
      admin: this.admin as KernelClient,
      persona: (id, rights, limits) => this.persona(id, rights, limits),
      signal,
    };
  }

  /** SIGTERM, then SIGKILL if it does not exit within 15 s; the home is removed. */
  async stop(): Promise<void> {
    await this.admin?.close().catch(() => {});
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((r) => child.once("exit", () => r()));
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(t);
    }
    rmSync(this.home, { recursive: true, force: true });
  }
}
