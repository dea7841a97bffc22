import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { describe, it } from "node:test";
import type { CborValue, KpipError } from "@kpip/protocol";
import { removeHome, sandboxSkip, until, withKernel } from "./harness.js";

/** Every text and number in `v`, and its keys, as one line (byte strings as UTF-8). */
function flat(v: CborValue | undefined): string {
  if (v instanceof Uint8Array) return Buffer.from(v).toString();
  if (Array.isArray(v)) return v.map(flat).join(" ");
  if (v !== null && typeof v === "object")
    return Object.entries(v)
      .map(([k, x]) => `${k}=${flat(x as CborValue)}`)
      .join(" ");
  return String(v);
}

/** Whether `v` holds a key `key` at any depth. */
function hasKey(v: CborValue | undefined, key: string): boolean {
  if (Array.isArray(v)) return v.some((x) => hasKey(x, key));
  if (v === null || typeof v !== "object" || v instanceof Uint8Array) return false;
  return Object.entries(v).some(([k, x]) => k === key || hasKey(x as CborValue, key));
}

describe("what a persona learns of the host's layout from its agents and commands", { skip: sandboxSkip }, () => {
  it("agent.spawn, agent.status, agent.logs, agent.list and the agent's kernel events name no host pid nor scratch path; the audit record keeps the pid", async () => {
    await withKernel({}, async (t) => {
      const c = await t.admin();
      const events = await c.events.subscribe("topic://kernel/personas/admin/**");
      const answers: (CborValue | undefined)[] = [];
      answers.push(await c.agents.spawn("sh", "w1", { args: ["-c", "pwd; sleep 300"], rights: [], lifetimeMs: 60_000 }));
      const rec = t.k.inspect.getAgent("admin/sh/w1");
      const pid = rec?.pid as number;
      const scratchRoot = dirname(rec?.cwd as string);
      assert.ok(pid > 0 && scratchRoot.startsWith("/"), "the kernel knows both");
      await until(async () => Buffer.from((await c.agents.logs("agent://sh/w1")).stdout).length > 0 || undefined);
      answers.push(await c.agents.status("agent://sh/w1"), await c.agents.logs("agent://sh/w1"), await c.agents.list());
      await c.agents.kill("agent://sh/w1");
      await until(async () => (await c.agents.status("agent://sh/w1")).state === "killed", 30_000, "killed");
      answers.push(await c.agents.status("agent://sh/w1"));
      for await (const e of events) {
        answers.push(e.data as CborValue);
        if ((e.data as { state?: string }).state === "killed") break;
      }
      const d = await c.compute.command("sh", ["-c", "pwd; echo $HOME"]);
      answers.push(await c.ops.wait(d), await c.ops.status(d), await c.ops.list());
      for (const a of answers) {
        assert.equal(hasKey(a, "pid"), false, flat(a));
        assert.ok(!flat(a).includes(scratchRoot), flat(a));
        assert.ok(
          !flat(a)
            .split(/[^0-9]/)
            .includes(String(pid)),
          `no host pid ${pid}: ${flat(a)}`,
        );
      }
      // What the agent and the command see of their directory is the sandbox's name for it.
      assert.equal(Buffer.from((await c.agents.logs("agent://sh/w1")).stdout).toString(), "/scratch\n");
      // The operator's record keeps the host pid.
      const spawned = t.k.inspect.queryAudit({ op: "agent.spawned", limit: 10 });
      assert.deepEqual(
        spawned.map((r) => JSON.parse(r.detail ?? "null").pid),
        [pid],
      );
    });
  });

  it("a launch that fails on the host (the scratch root replaced by a file) names no host path to the persona: agent.spawn's refusal, the command's op message", async () => {
    const base = mkdtempSync(join(tmpdir(), "kpip-hostpath-"));
    chmodSync(base, 0o711); // the sandbox's user reaches its directory under it
    const root = join(base, "scratch");
    try {
      await withKernel({ sandboxScratch: root }, async (t) => {
        const c = await t.admin();
        await c.ops.wait(await c.compute.command("true"));
        rmSync(root, { recursive: true, force: true });
        writeFileSync(root, "not a directory");
        await assert.rejects(c.agents.spawn("sleep", "w1", { args: ["1"], rights: [], lifetimeMs: 10_000 }), (e: Error) => {
          assert.match(e.message, /cannot start sleep: the kernel could not prepare its sandbox/);
          assert.ok(!e.message.includes(base), e.message);
          // The host failed, not the persona's request: INTERNAL (retryable), never SEMANTIC.
          assert.equal((e as KpipError).errorClass, "INTERNAL");
          return true;
        });
        const d = await c.compute.command("true");
        const st = await until(async () => {
          const s = await c.ops.status(d);
          return s.state === "failed" ? s : undefined;
        });
        assert.match(st.message ?? "", /cannot run true: the kernel could not prepare its sandbox/);
        assert.equal(st.errorClass, "INTERNAL");
        assert.ok(!(st.message ?? "").includes(base), st.message);
        rmSync(root, { force: true });
        mkdirSync(root);
      });
    } finally {
      removeHome(base);
    }
  });

  it("a sandbox whose trial run fails quoting its scratch directory: system.info and the refusals name the scratch root, never its host path", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-badbwrap-"));
    const base = mkdtempSync(join(tmpdir(), "kpip-hostpath-"));
    const wrapper = join(dir, "bwrap");
    // A bubblewrap that cannot reach the scratch directory, and says where it looked (as bwrap does).
    writeFileSync(
      wrapper,
      `#!/bin/sh\nif [ "$1" = --help ]; then exit 0; fi\n` +
        `while [ $# -gt 0 ]; do if [ "$1" = --bind ]; then echo "bwrap: Can't find source path $2: Permission denied" >&2; exit 1; fi; shift; done\nexit 1\n`,
    );
    chmodSync(wrapper, 0o755);
    chmodSync(dir, 0o755);
    chmodSync(base, 0o711);
    try {
      await withKernel({ bwrapPath: wrapper, sandboxScratch: join(base, "scratch") }, async (t) => {
        const c = await t.admin();
        const info = (await c.call("system.info", "kernel://")).payload as { sandbox: { usable: boolean; reason?: string } };
        assert.equal(info.sandbox.usable, false);
        assert.match(info.sandbox.reason ?? "", /Can't find source path <the scratch root>\/[0-9a-f]{24}: Permission denied/);
        assert.ok(!(info.sandbox.reason ?? "").includes(base), info.sandbox.reason);
        await assert.rejects(c.agents.spawn("sleep", "w1", { args: ["1"], rights: [], lifetimeMs: 10_000 }), (e: Error) => {
          assert.match(e.message, /no process sandbox: .*<the scratch root>/);
          assert.ok(!e.message.includes(base), e.message);
          return true;
        });
        await assert.rejects(c.compute.command("true"), (e: Error) => !e.message.includes(base));
      });
    } finally {
      removeHome(dir);
      removeHome(base);
    }
  });
});
