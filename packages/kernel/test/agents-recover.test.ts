import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { generateIdentity } from "@kpip/protocol";
import Database from "better-sqlite3";
import { processIdentity } from "../src/agents/process-identity.js";
import { addPersonaKey, connectAdminOf, processAlive, removeHome, spawnReady, startKernel, until } from "./harness.js";

const alive = processAlive;

/** This boot's id, as the kernel reads it. */
const currentBoot = () => readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();

/** The processes of group `pgid` (field 5 of /proc/<pid>/stat) still running (a killed one not yet reaped is a zombie). */
function groupMembers(pgid: number): string[] {
  return readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        const fields = readFileSync(`/proc/${d}/stat`, "utf8");
        const st = fields.slice(fields.lastIndexOf(")") + 2).split(" ");
        return st[0] !== "Z" && Number(st[2]) === pgid;
      } catch {
        return false;
      }
    });
}

/** A process leading its own process group, as a sandboxed agent's bubblewrap does. */
function groupLeader(): ChildProcess {
  const p = spawn("sleep", ["600"], { detached: true, stdio: "ignore" });
  p.unref();
  return p;
}

describe("agents recorded running when the kernel died", () => {
  it("are marked lost; only a process group whose leader is still the spawned process is killed, never one that merely has its pid", async () => {
    const first = await startKernel();
    const home = first.home;
    await first.stop();
    const reused = groupLeader();
    const same = groupLeader();
    const legacy = groupLeader();
    try {
      const pids = [reused.pid, same.pid, legacy.pid] as number[];
      await until(() => pids.every((p) => processIdentity(p) !== undefined) || undefined);
      const db = new Database(join(home, "kernel.db"));
      const put = db.prepare(
        "INSERT INTO agents (id, persona, spawner, command, args, pid, state, started_at, deadline, token_id, cwd, proc_id) " +
          "VALUES (?, ?, 'admin', 'tool', '[]', ?, 'running', 1, 9999999999999, ?, '/tmp', ?)",
      );
      // The pid of an agent now leads another process (a reboot, or the agent died with its kernel).
      const [bootId, ns, start] = (processIdentity(reused.pid as number) as string).split(" ");
      put.run("admin/tool/1", "admin/tool-1", reused.pid, "t1", `${bootId} ${ns} ${Number(start) + 1}`);
      // The agent's own process, still running.
      put.run("admin/tool/2", "admin/tool-2", same.pid, "t2", processIdentity(same.pid as number));
      // A row of an older home: no identity recorded.
      put.run("admin/tool/3", "admin/tool-3", legacy.pid, "t3", null);
      db.close();

      const t = await startKernel({}, home);
      try {
        for (const id of ["admin/tool/1", "admin/tool/2", "admin/tool/3"]) assert.equal(t.k.inspect.getAgent(id)?.state, "lost");
        await until(() => !alive(same.pid as number) || undefined);
        assert.ok(alive(reused.pid as number), "a process that only has the agent's pid is not signalled");
        assert.ok(alive(legacy.pid as number), "a pid recorded without an identity is not signalled");
        const lost = t.k.inspect.queryAudit({ op: "agent.exited", limit: 10 });
        assert.equal(lost.length, 3);
        // Their output died with the kernel's memory: the record says unknown (null), not empty (absent or size 0).
        for (const r of lost) {
          const d = JSON.parse(r.detail ?? "{}") as Record<string, unknown>;
          assert.ok("stdout" in d && "stderr" in d, r.detail ?? "");
          assert.equal(d.stdout, null);
          assert.equal(d.stderr, null);
        }
      } finally {
        await t.stop();
      }
    } finally {
      for (const p of [reused, same, legacy]) if (p.pid && alive(p.pid)) process.kill(-p.pid, "SIGKILL");
      removeHome(home);
    }
  });

  it("a key in the agent namespace that no agent row names (the kernel died between the spawn's key and its row) is removed at start, on the record", async () => {
    const first = await startKernel();
    const home = first.home;
    await first.stop();
    const stale = generateIdentity("admin/agent.crashed");
    addPersonaKey({ home }, "admin/agent.crashed", stale.publicKey);
    addPersonaKey({ home }, "admin/agent.crashed/sub", stale.publicKey);
    const t = await startKernel({}, home);
    try {
      assert.equal(t.k.inspect.getPersona("admin/agent.crashed"), undefined, "the stale agent key is gone");
      assert.equal(t.k.inspect.getPersona("admin/agent.crashed/sub"), undefined, "and what lay under it");
      const removed = t.k.inspect.queryAudit({ op: "persona.removed", limit: 10 }).map((r) => r.target);
      assert.deepEqual(removed.sort(), ["persona://admin/agent.crashed", "persona://admin/agent.crashed/sub"]);
      // Nobody can attest as it: the key is not registered any more.
      await assert.rejects(t.connect(stale, [t.adminToken]));
      assert.ok(t.k.inspect.getPersona("admin"), "real personas stay");
    } finally {
      await t.stop();
      removeHome(home);
    }
  });

  it("an agent whose group leader is gone but whose group lives on (a child it left) has that group killed; in another boot or pid namespace, nothing", async () => {
    const first = await startKernel();
    const home = first.home;
    await first.stop();
    // A leader that starts a child in its group and exits at once, as an agent does when its kernel's connection drops.
    // Each waits for its stdin to close, so that its identity is read while it runs. Its
    // environment carries its spawn's entry, as an agent's does (the token id of its row).
    const start = () =>
      spawn("sh", ["-c", "sleep 600 >/dev/null 2>&1 </dev/null & read x"], {
        detached: true,
        stdio: ["pipe", "ignore", "ignore"],
        env: { ...process.env, KPIP_SPAWN: "t4" },
      });
    const leader = start();
    const other = start();
    const lid = leader.pid as number;
    const oid = other.pid as number;
    const identity = processIdentity(lid) ?? "";
    const otherIdentity = processIdentity(oid) ?? "";
    leader.stdin?.end();
    other.stdin?.end();
    await until(() => (processIdentity(lid) === undefined && processIdentity(oid) === undefined) || undefined);
    const members = groupMembers;
    try {
      assert.ok(identity && otherIdentity);
      await until(() => (members(lid).length === 1 && members(oid).length === 1) || undefined);
      const db = new Database(join(home, "kernel.db"));
      const put = db.prepare(
        "INSERT INTO agents (id, persona, spawner, command, args, pid, state, started_at, deadline, token_id, cwd, proc_id) " +
          "VALUES (?, ?, 'admin', 'tool', '[]', ?, 'running', 1, 9999999999999, ?, '/tmp', ?)",
      );
      put.run("admin/tool/4", "admin/tool-4", lid, "t4", identity);
      // Recorded in another boot, or in another pid namespace of this boot (a container
      // restarted): its pid means nothing now.
      const [, ns, start] = otherIdentity.split(" ");
      put.run("admin/tool/5", "admin/tool-5", oid, "t5", `00000000-0000-0000-0000-000000000000 ${ns} ${start}`);
      put.run("admin/tool/6", "admin/tool-6", oid, "t6", `${currentBoot()} 1 ${start}`);
      db.close();
      const t = await startKernel({}, home);
      try {
        await until(() => members(lid).length === 0 || undefined);
        assert.equal(members(oid).length, 1, "a group recorded in another boot or pid namespace is not signalled");
        for (const id of ["admin/tool/5", "admin/tool/6"]) assert.equal(t.k.inspect.getAgent(id)?.state, "lost");
      } finally {
        await t.stop();
      }
    } finally {
      for (const g of [lid, oid])
        try {
          process.kill(-g, "SIGKILL");
        } catch {
          // gone
        }
      removeHome(home);
    }
  });

  it("a group whose leader is gone and whose id a later process took (a daemon's double fork: setsid, fork, exit) is not the spawn's: neither an agent's nor a command's start kill touches it", async () => {
    const first = await startKernel();
    const home = first.home;
    await first.stop();
    // Someone else's daemons: each one's first process leads a new group and leaves a child in it.
    const daemons = [0, 1].map(() =>
      spawn("sh", ["-c", "sleep 600 >/dev/null 2>&1 </dev/null & read x"], {
        detached: true,
        stdio: ["pipe", "ignore", "ignore"],
      }),
    );
    const groups = daemons.map((d) => d.pid as number);
    const identities = groups.map((g) => processIdentity(g) ?? "");
    for (const d of daemons) d.stdin?.end();
    try {
      assert.ok(identities.every(Boolean));
      await until(() => groups.every((g) => processIdentity(g) === undefined && groupMembers(g).length === 1) || undefined);
      // The spawn recorded with each pid was an earlier process (same boot and pid namespace,
      // started before): its group ended, and the pid went to the daemon's first process.
      const earlier = identities.map((id) => {
        const [boot, ns, startedAt] = id.split(" ");
        return `${boot} ${ns} ${Number(startedAt) - 1}`;
      });
      const db = new Database(join(home, "kernel.db"));
      db.prepare(
        "INSERT INTO agents (id, persona, spawner, command, args, pid, state, started_at, deadline, token_id, cwd, proc_id) " +
          "VALUES ('admin/tool/7', 'admin/tool-7', 'admin', 'tool', '[]', ?, 'running', 1, 9999999999999, 't7', '/tmp', ?)",
      ).run(groups[0], earlier[0]);
      db.prepare(
        "INSERT INTO ops (id, persona, session, kind, name, state, created_at, started_at, deadline, expires_at, pid, proc_id) " +
          "VALUES ('op7', 'admin', 's', 'command', 'sh', 'running', 1, 1, 9999999999999, 9999999999999, ?, ?)",
      ).run(groups[1], earlier[1]);
      db.close();
      const t = await startKernel({ sandbox: "none" }, home);
      try {
        assert.equal(t.k.inspect.getAgent("admin/tool/7")?.state, "lost");
        assert.equal(t.k.inspect.getOp("op7")?.state, "failed");
        assert.equal(groupMembers(groups[0] as number).length, 1, "the agent's recorded pid: another's group, not signalled");
        assert.equal(groupMembers(groups[1] as number).length, 1, "the command's recorded pid: another's group, not signalled");
      } finally {
        await t.stop();
      }
    } finally {
      for (const g of groups)
        try {
          process.kill(-g, "SIGKILL");
        } catch {
          // gone
        }
      removeHome(home);
    }
  });

  it("processIdentity tells a live process from a gone one and reads the start time past a command name with spaces and parentheses", () => {
    const own = processIdentity(process.pid);
    assert.match(own ?? "", /^[0-9a-f-]{36} \d+ \d+$/);
    assert.equal(processIdentity(process.pid), own, "stable for one process");
    assert.equal(processIdentity(0), undefined);
    assert.equal(processIdentity(2 ** 31), undefined);
    const root = mkdtempSync(join(tmpdir(), "kpip-proc-"));
    try {
      // The leader thread's stat (/proc/<pid>/stat's cost grows with the process's threads).
      mkdirSync(join(root, "42", "task", "42"), { recursive: true });
      // Fields 3.. after the command name; field 22 (start time) is 987654.
      const rest = ["S", ...Array.from({ length: 18 }, (_, i) => String(i + 4)), "987654", "0"].join(" ");
      writeFileSync(join(root, "42", "task", "42", "stat"), `42 (a) b (c) ${rest}\n`);
      assert.match(processIdentity(42, root) ?? "", / 987654$/);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

const kernelModule = new URL("../src/index.js", import.meta.url).href;

/** Whether `pid` still runs: a zombie (killed, not yet reaped by whoever adopted it) does not. */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

describe("commands recorded running when the kernel died", () => {
  it("with sandbox none (no --die-with-parent), a command's process group outliving a SIGKILLed kernel is ended at the next start before its op is recorded failed", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-"));
    const marks = mkdtempSync(join(tmpdir(), "kpip-marks-"));
    const pidFile = join(marks, "pids");
    const code = `const { Kernel } = await import(process.argv[1]);
await new Kernel({ home: process.argv[2], logLevel: "silent", sandbox: "none" }).start();
process.stdout.write("ready\\n");
setInterval(() => {}, 1000);`;
    const child = await spawnReady(["--input-type=module", "-e", code, kernelModule, home], "ready");
    const exited = new Promise((r) => child.once("exit", r));
    let pids: number[] = [];
    try {
      const c = await connectAdminOf(home);
      // The command (its group's leader) and a child it leaves in its group; both say their pids once running.
      const d = await c.compute.command("sh", [
        "-c",
        `sleep 600 & echo "$$ $!" > ${pidFile}.tmp && mv ${pidFile}.tmp ${pidFile}; wait`,
      ]);
      pids = (
        await until(() => (existsSync(pidFile) ? readFileSync(pidFile, "utf8").trim() : undefined), 30_000, "the command's pids")
      )
        .split(" ")
        .map(Number);
      child.kill("SIGKILL");
      await exited;
      assert.ok(pids.every(running), "nothing but its sandbox ends a command with its kernel; here there is none");
      const t = await startKernel({ sandbox: "none" }, home);
      try {
        await until(() => !pids.some(running) || undefined, 30_000, "the left command's processes to be killed by the start");
        const admin = await t.admin();
        const st = await admin.ops.status(d);
        assert.equal(st.state, "failed");
        assert.equal(st.errorClass, "INTERNAL");
        const states = t.k.inspect.queryAudit({ op: "op.state", limit: 100 }).filter((r) => r.target === d.op);
        assert.ok(
          states.some((r) => r.detail?.includes("interrupted")),
          JSON.stringify(states.map((r) => r.detail)),
        );
      } finally {
        await t.stop();
      }
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      // Only the processes this test started, and only while they still run.
      for (const p of pids) if (running(p)) process.kill(p, "SIGKILL");
      removeHome(home);
      removeHome(marks);
    }
  });
});
