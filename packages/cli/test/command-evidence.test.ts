import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Kernel } from "@kpip/kernel";
import { encodeCanonical } from "@kpip/protocol";
import { CommandWorker } from "@kpip/protocol/testing";
import { connectAdmin, DISPATCH } from "./run.js";

// What did a command print, once its result is gone (its TTL, the tree's trim)? Its end's
// op.state record names the result and each stream by hash.
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());

const sha256 = (b: Uint8Array | string) => createHash("sha256").update(b).digest("hex");

interface Row {
  target: string;
  detail: string | null;
}

describe("what a command printed, in the evidence", () => {
  it("a command's end record names its exit code and the SHA-256 and size of its result, stdout and stderr", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-command-evidence-"));
    let result: unknown;
    let failed: unknown;
    try {
      const k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      const c = await connectAdmin(home);
      try {
        const ok = await c.compute.command("sh", ["-c", "printf 'exfiltrated: %s' s3cret"]);
        result = await c.ops.wait(ok);
        const bad = await c.compute.command("sh", ["-c", "printf partial; printf 'no such key' >&2; exit 3"]);
        await c.ops.wait(bad).catch((e: { payload?: { result?: unknown } }) => {
          failed = e.payload?.result;
        });
      } finally {
        await c.close();
        await k.stop();
      }
      const r = await cli.run(["audit", "query", "--op", "op.state", "--json", "--home", home]);
      assert.equal(r.code, 0, r.err);
      const ends = r.out
        .trim()
        .split("\n")
        .map((l) => JSON.parse((JSON.parse(l) as Row).detail ?? "{}") as { state: string; result?: Record<string, unknown> })
        .filter((d) => d.state === "succeeded" || d.state === "failed");
      assert.equal(ends.length, 2);
      const [s, f] = ends.map((d) => d.result);
      assert.deepEqual(s, {
        sha256: sha256(encodeCanonical(result as never)),
        size: encodeCanonical(result as never).byteLength,
        exitCode: 0,
        signal: null,
        truncated: false,
        stdout: { sha256: sha256("exfiltrated: s3cret"), size: 19 },
        stderr: { sha256: sha256(""), size: 0 },
      });
      assert.ok(failed, "the failed command's answer carried its result");
      assert.equal(f?.sha256, sha256(encodeCanonical(failed as never)));
      assert.equal(f?.exitCode, 3);
      assert.deepEqual(f?.stdout, { sha256: sha256("partial"), size: 7 });
      assert.deepEqual(f?.stderr, { sha256: sha256("no such key"), size: 11 });
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it("an agent's agent.exited record names the SHA-256 and size of what it printed on stdout and stderr", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-agent-evidence-"));
    try {
      const k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      const c = await connectAdmin(home);
      try {
        await c.agents.spawn("sh", "talker", {
          args: ["-c", "printf 'agent says: %s' s3cret; printf warn >&2"],
          rights: [{ ops: ["storage.read"], targets: ["obj://talker/**"] }],
          lifetimeMs: 600_000,
        });
        // A bound for an agent that never ends (a failure), not a guess at its speed.
        for (const end = Date.now() + 60_000; !k.inspect.queryAudit({ op: "agent.exited", limit: 10 }).length; ) {
          if (Date.now() > end) throw new Error("the agent did not end within 60 s");
          await new Promise((r) => setTimeout(r, 20));
        }
      } finally {
        await c.close();
        await k.stop();
      }
      const r = await cli.run(["audit", "query", "--op", "agent.exited", "--json", "--home", home]);
      assert.equal(r.code, 0, r.err);
      const d = JSON.parse((JSON.parse(r.out.trim()) as Row).detail ?? "{}") as Record<string, unknown>;
      assert.equal(d.state, "exited");
      assert.deepEqual(d.stdout, { sha256: sha256("agent says: s3cret"), size: 18 });
      assert.deepEqual(d.stderr, { sha256: sha256("warn"), size: 4 });
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
