import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, it } from "node:test";
import { until } from "@kpip/protocol/testing";
import { descendants, killSandbox } from "../src/sandbox/kill.js";
import { processAlive } from "./harness.js";

describe("killing a sandbox", () => {
  it("finds descendants down to the depth asked (a sandbox's namespace init and its program), or all of them", async () => {
    // sh → sh → sleep: each shell forks (a job in the background, then wait), none execs.
    const top = spawn("sh", ["-c", `sh -c "sleep 60 & wait" & wait`], { stdio: "ignore", detached: true });
    const pid = top.pid as number;
    try {
      await until(() => descendants(pid).length === 2, 30_000, "the tree to be up");
      const [child, grandchild] = descendants(pid) as [number, number];
      assert.deepEqual(descendants(pid, 1), [child], "one generation: the shell's child only");
      assert.deepEqual(descendants(pid, 2), [child, grandchild]);
      // Without a namespace (no sandbox) every process found is killed, the group's and below.
      killSandbox(pid);
      await until(() => !processAlive(grandchild) && !processAlive(child), 30_000, "the whole tree killed");
    } finally {
      try {
        process.kill(-pid, "SIGKILL");
      } catch {
        // gone
      }
    }
  });
});
