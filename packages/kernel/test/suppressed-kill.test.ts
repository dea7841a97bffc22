import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { KernelClient, KpipError } from "@kpip/client";
import { generateIdentity } from "@kpip/protocol";
import { HOME_FILES, Kernel, SqliteStore, verifyAudit } from "../src/index.js";
import { addPersonaKey, removeHome, spawnReady, startKernel, until } from "./harness.js";

const kernelModule = new URL("../src/index.js", import.meta.url).href;

/**
 * A kernel in a child process whose housekeeping tick is 30 s away (half the heartbeat), with a
 * refusal record rate and a failed-handshake record rate of 2 a second (bursts of 10): refusals
 * and failed handshakes past them are counted for an `audit.suppressed` record, answered at once.
 */
function slowTickKernel(home: string) {
  const code = `const { Kernel } = await import(process.argv[1]);
const k = new Kernel({ home: process.argv[2], logLevel: "silent", heartbeatMs: 60000, handshakeTimeoutMs: 60000,
  auditRefusalRate: 2, auditRefusalPersonaRate: 2, auditHandshakeRate: 2 });
await k.start();
process.stdout.write("ready\\n");
setInterval(() => {}, 1000);`;
  return spawnReady(["--input-type=module", "-e", code, kernelModule, home], "ready");
}

/** The refusals of `persona` on the home's record: one per own record, the count of each aggregate. */
function refusalsOnRecord(home: string, persona: string): number {
  const store = new SqliteStore(join(home, HOME_FILES.database));
  try {
    let n = 0;
    for (let from = 1; ; ) {
      const rows = store.scanAudit(from, 1000);
      if (rows.length === 0) return n;
      for (const r of rows) {
        if (r.persona !== persona || r.phase !== "refused") continue;
        n += r.op === "audit.suppressed" ? Number(/^(\d+) refusals/.exec(r.message ?? "")?.[1]) : 1;
      }
      from = (rows.at(-1)?.seq ?? from) + 1;
    }
  } finally {
    store.close();
  }
}

/** The failed handshakes on the home's record: one per own record, the count of each aggregate. */
function failedHandshakesOnRecord(home: string): number {
  const store = new SqliteStore(join(home, HOME_FILES.database));
  try {
    let n = 0;
    for (let from = 1; ; ) {
      const rows = store.scanAudit(from, 1000);
      if (rows.length === 0) return n;
      for (const r of rows) {
        if (r.op === "session.handshake" && (r.message ?? "").startsWith("BAD_MAGIC:")) n++;
        else if (r.op === "audit.suppressed" && r.phase === "session") n += JSON.parse(r.detail ?? "{}").count as number;
      }
      from = (rows.at(-1)?.seq ?? from) + 1;
    }
  } finally {
    store.close();
  }
}

/** One connection that sends 16 garbage bytes and waits for the kernel to close it (a failed handshake). */
function garbage(path: string): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect(path);
    s.on("connect", () => s.write(Buffer.alloc(16, 0x41)));
    s.on("data", () => {});
    s.on("error", () => resolve());
    s.on("close", () => resolve());
  });
}

describe("refusals past the refusal rate and a kernel kill", () => {
  it("refusals past the refusal rate are on the record within a fraction of a second of their answers, not at the next tick a SIGKILL may never reach", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    try {
      await (await startKernel({}, home)).stop();
      const identity = generateIdentity("prober");
      addPersonaKey({ home }, "prober", identity.publicKey);
      const child = await slowTickKernel(home);
      const exited = new Promise((r) => child.once("exit", r));
      // Probes for other personas' objects, each refused (no capability) and answered.
      const sent = 60;
      try {
        const c = await KernelClient.connect({ socket: new Kernel({ home }).socketPath, identity, tokens: [], reconnect: false });
        for (let i = 0; i < sent; i++)
          await assert.rejects(
            c.storage.read(`obj://victim/secret-${i}`),
            (e) => e instanceof KpipError && e.errorClass === "CAPABILITY",
          );
        await c.close();
        // Every answered refusal is on the record long before the tick (30 s): the kill below
        // takes nothing with it. Before, the aggregate waited for the tick, and the kill took it.
        await until(() => refusalsOnRecord(home, "prober") === sent || undefined, 10_000, "every answered refusal on the record");
        child.kill("SIGKILL");
        await exited;
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      }
      await (await startKernel({}, home)).stop();
      assert.equal(refusalsOnRecord(home, "prober"), sent, "the restart keeps every refusal's record, none twice");
      const store = new SqliteStore(join(home, HOME_FILES.database));
      try {
        assert.equal(verifyAudit(store).ok, true);
      } finally {
        store.close();
      }
    } finally {
      removeHome(home);
    }
  });

  it("failed handshakes past the record rate are on the record within a fraction of a second, not at the next tick a SIGKILL may never reach", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    try {
      await (await startKernel({}, home)).stop();
      const child = await slowTickKernel(home);
      const exited = new Promise((r) => child.once("exit", r));
      const sent = 40;
      try {
        const socket = new Kernel({ home }).socketPath;
        for (let i = 0; i < sent; i++) await garbage(socket);
        await until(() => failedHandshakesOnRecord(home) === sent || undefined, 10_000, "every failed handshake on the record");
        child.kill("SIGKILL");
        await exited;
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      }
      await (await startKernel({}, home)).stop();
      assert.equal(failedHandshakesOnRecord(home), sent, "the restart keeps every failure's record, none twice");
    } finally {
      removeHome(home);
    }
  });
});
