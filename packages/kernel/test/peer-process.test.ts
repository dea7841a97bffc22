import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { serializeIdentity } from "@kpip/protocol";
import { runProcess } from "@kpip/protocol/testing";
import { REPO_ROOT, until, withKernel } from "./harness.js";
import { allAudit } from "./wire.js";

const PERSONA = fileURLToPath(new URL("../../test/fixtures/uds-persona.mjs", import.meta.url));
const linux = process.platform === "linux";

/** The process fields of the session.open records of `persona`, in order. */
function openedBy(rows: ReturnType<typeof allAudit>, persona: string): Record<string, unknown>[] {
  return rows
    .filter((r) => r.op === "session.open" && r.persona === persona)
    .map((r) => JSON.parse(r.detail ?? "{}") as Record<string, unknown>);
}

/** This process's start, clock ticks after boot (/proc/self/stat field 22). */
function ownStart(): number {
  const stat = readFileSync("/proc/self/stat", "utf8");
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[22 - 3]);
}

describe("the Unix socket's peer process is on the session.open record (SO_PEERCRED)", () => {
  it("one token used from two processes: each session.open names its own process's real pid, uid, gid and start", {
    skip: !linux && "SO_PEERCRED is Linux's",
  }, async () => {
    await withKernel({}, async (t) => {
      const p = await t.persona("leaky", [{ ops: ["system.health"], targets: ["kernel://"] }]);
      const env = {
        ...process.env,
        KPIP_TEST_SOCKET: t.k.socketPath,
        KPIP_TEST_IDENTITY: serializeIdentity(p.identity),
        KPIP_TEST_TOKEN: Buffer.from(p.token).toString("base64url"),
      };
      const runs = await Promise.all(
        [1, 2].map(() => runProcess(process.execPath, [PERSONA], { cwd: REPO_ROOT, env, killAfterMs: 60_000 })),
      );
      const children = runs.map((r) => {
        assert.equal(r.code, 0, r.err);
        return JSON.parse(r.out) as { pid: number; uid: number; gid: number; start: number };
      });
      assert.notEqual(children[0]?.pid, children[1]?.pid);
      const opened = await until(
        () => {
          const o = openedBy(allAudit(t.k), "leaky");
          return o.length === 2 ? o : undefined;
        },
        10_000,
        "both sessions' open records",
      );
      assert.ok(
        opened.every((d) => d.process !== null),
        `peer processes unknown (${opened.map((d) => d.processUnknown).join(", ")}): did \`npm install\` build packages/kernel/build/Release/peercred.node?`,
      );
      // The same token and persona; only the process tells the two sessions' holders apart.
      const byPid = new Map(opened.map((d) => [(d.process as { pid: number }).pid, d.process]));
      for (const c of children) assert.deepEqual(byPid.get(c.pid), c, "the record names the process that connected");
    });
  });

  it("the kernel's own connection names the kernel's process (pid, uid, gid, start)", {
    skip: !linux && "SO_PEERCRED is Linux's",
  }, async () => {
    await withKernel({}, async (t) => {
      const c = await t.admin();
      const [d] = openedBy(allAudit(t.k), c.persona);
      assert.deepEqual(d?.process, { pid: process.pid, uid: process.getuid?.(), gid: process.getgid?.(), start: ownStart() });
    });
  });

  it("without the addon the kernel still serves, and the record says the peer process is unknown (never a guess)", async () => {
    const saved = process.env.KPIP_PEERCRED;
    process.env.KPIP_PEERCRED = "off";
    try {
      await withKernel({}, async (t) => {
        const c = await t.admin();
        assert.equal((await c.system.health()).status, "ok");
        const opened = openedBy(allAudit(t.k), c.persona);
        assert.equal(opened.length, 1);
        assert.equal(opened[0]?.process, null);
        assert.equal(opened[0]?.processUnknown, "addon not loaded");
      });
    } finally {
      if (saved === undefined) delete process.env.KPIP_PEERCRED;
      else process.env.KPIP_PEERCRED = saved;
    }
  });
});
