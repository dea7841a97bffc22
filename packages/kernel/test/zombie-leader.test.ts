import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { processIdentity, SPAWN_ENV, stillOwnGroup } from "../src/agents/process-identity.js";
import { removeHome, startKernel, until } from "./harness.js";

/** The state letter of `pid` (field 3 of its stat), or undefined when it is gone. */
function state(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.charAt(stat.lastIndexOf(")") + 2);
  } catch {
    return undefined;
  }
}

/**
 * A process group's leader that has ended and is not reaped: as an agent's bubblewrap (or a
 * command's group leader) is after its kernel was SIGKILLed — its processes dead with it, the
 * leader adopted by an init that reaps late. Here a parent that never reaps: its child makes a
 * group of its own and exits.
 */
function zombieLeader() {
  const parent = spawn(
    "perl",
    ["-e", '$| = 1; my $p = fork(); if ($p == 0) { setpgrp(0, 0); exit 0 } print "$p\\n"; sleep 600'],
    { stdio: ["ignore", "pipe", "ignore"] },
  );
  const pid = new Promise<number>((resolve) => parent.stdout.once("data", (d) => resolve(Number(String(d).trim()))));
  return { parent, pid };
}

describe("a spawn's group leader found a zombie at the next start", () => {
  it("an agent and a command whose group leader is a zombie at the next start are not on the record as having outlived the kernel", async () => {
    const first = await startKernel();
    const home = first.home;
    await first.stop();
    const z = zombieLeader();
    try {
      const pid = await z.pid;
      await until(() => state(pid) === "Z" || undefined, 10_000, "the leader a zombie");
      // The identity recorded at spawn is the leader's own: the zombie keeps it.
      const procId = processIdentity(pid);
      assert.ok(procId);
      const db = new Database(join(home, "kernel.db"));
      db.prepare(
        "INSERT INTO agents (id, persona, spawner, command, args, pid, state, started_at, deadline, token_id, cwd, proc_id) " +
          "VALUES ('admin/tool/9', 'admin/tool-9', 'admin', 'tool', '[]', ?, 'running', 1, 9999999999999, 't9', '/tmp', ?)",
      ).run(pid, procId);
      db.prepare(
        "INSERT INTO ops (id, persona, session, kind, name, state, created_at, started_at, deadline, expires_at, pid, proc_id) " +
          "VALUES ('op9', 'admin', 's', 'command', 'sh', 'running', 1, 1, 9999999999999, 9999999999999, ?, ?)",
      ).run(pid, procId);
      db.close();
      const t = await startKernel({ sandbox: "none" }, home);
      try {
        const rows = t.k.inspect.queryAudit({ limit: 10_000 });
        const exited = rows.find((r) => r.op === "agent.exited" && r.target === "agent://tool/9");
        const interrupted = rows.find((r) => r.op === "op.state" && r.target === "op://op9");
        assert.ok(exited && interrupted, "both ends recorded");
        for (const r of [exited, interrupted]) {
          const d = JSON.parse(r.detail ?? "{}");
          assert.equal(d.outlived, undefined, `${r.op}: a zombie leader ran nothing after the kill: ${r.detail}`);
          assert.doesNotMatch(r.message ?? "", /outlived/);
        }
      } finally {
        await t.stop();
      }
    } finally {
      z.parent.kill("SIGKILL");
      removeHome(home);
    }
  });

  it("a leader whose main thread alone ended (pthread_exit while another thread runs) is alive: its group is still the spawn's", async () => {
    // A group leader that leaves its main thread with pthread_exit: that thread reads Z and the
    // process's environ as gone, while the process runs on in another thread. Taken as a zombie,
    // an agent that outlived its kernel this way was judged another's and left running.
    const leader = spawn(
      "python3",
      [
        "-c",
        "import os, threading, time, ctypes\nos.setpgrp()\nthreading.Thread(target=lambda: time.sleep(600)).start()\nprint(os.getpid(), flush=True)\nctypes.CDLL(None).pthread_exit(None)",
      ],
      { stdio: ["ignore", "pipe", "ignore"], env: { ...process.env, [SPAWN_ENV]: "spawn-7" } },
    );
    try {
      const pid = await new Promise<number>((resolve) => leader.stdout.once("data", (d) => resolve(Number(String(d).trim()))));
      const procId = processIdentity(pid);
      assert.ok(procId);
      await until(() => state(pid) === "Z" || undefined, 10_000, "the main thread ended");
      assert.equal(stillOwnGroup(pid, procId, "spawn-7"), true, "a process with a live thread is the spawn's leader still");
      leader.kill("SIGKILL");
      await until(() => state(pid) === undefined || undefined, 10_000, "the leader reaped");
      assert.equal(stillOwnGroup(pid, procId, "spawn-7"), false, "gone, with no member carrying the entry");
    } finally {
      leader.kill("SIGKILL");
    }
  });
});
