/**
 * The Python persona client (python/, package `kpip`) against real kernels: its unittest
 * suite (every spec vector, the client against a scripted kernel, the live tests), and a
 * kernel SIGKILLed and restarted under its load. The Python is `findPython()`'s; without
 * one these tests say so (and fail under CI=true or KPIP_REQUIRE_PYTHON=1).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { findPython, type ProcessRun, runProcess } from "@kpip/protocol/testing";
import { KernelProcess } from "./harness.js";

const PYTHON_DIR = fileURLToPath(new URL("../../../../python", import.meta.url));

const { path: python, why, required } = findPython();

/** Runs `python -m unittest <args>` in python/ without blocking the event loop; `onLine` sees stdout lines. */
function unittest(args: string[], env: Record<string, string>, onLine?: (line: string) => void): Promise<ProcessRun> {
  return runProcess(python as string, ["-m", "unittest", ...args], {
    cwd: PYTHON_DIR,
    env: { ...process.env, PYTHONDONTWRITEBYTECODE: "1", ...env },
    onLine,
  });
}

/** "Ran N tests" from unittest's report; asserts it passed with no test skipped. */
function assertPassed(r: ProcessRun): number {
  const ran = /Ran (\d+) tests?/.exec(r.err);
  assert.equal(r.code, 0, `python unittest failed:\n${r.err}\n${r.out}`);
  assert.ok(ran, `no unittest report:\n${r.err}`);
  assert.doesNotMatch(r.err, /skipped=/, `a Python test was skipped:\n${r.err}`);
  return Number(ran[1]);
}

function envFor(k: KernelProcess): Record<string, string> {
  return {
    KPIP_SOCKET: k.socket,
    KPIP_IDENTITY: join(k.home, "admin.identity"),
    KPIP_TOKEN: join(k.home, "admin.token"),
  };
}

describe("the Python persona client (python/)", () => {
  if (!python) {
    if (required) {
      it("needs Python with cryptography (CI=true or KPIP_REQUIRE_PYTHON=1)", () => assert.fail(why));
    } else {
      it(`SKIPPED — Python client tests not run: ${why}`, (t) => t.skip(why));
    }
    return;
  }

  it("passes its unittest suite against a real kernel: every spec vector, the client, the live tests", async () => {
    const k = new KernelProcess();
    try {
      await k.start();
      const r = await unittest(["discover", "-s", "tests", "-t", "."], envFor(k));
      assert.ok(assertPassed(r) >= 30);
    } finally {
      await k.dispose();
    }
  });

  it("keeps calling through a kernel SIGKILLed and restarted; no call is answered twice, none lost", async () => {
    const k = new KernelProcess();
    try {
      await k.start();
      let restarted: Promise<void> | undefined;
      const r = await unittest(["tests.lifecycle_restart"], { ...envFor(k), KPIP_LIFECYCLE: "1", KPIP_DEBUG: "1" }, (line) => {
        if (line === "KPIP-LIFECYCLE restart" && !restarted) restarted = k.kill().then(() => k.start());
      });
      assert.ok(restarted, `the Python test never asked for a restart:\n${r.err}`);
      await restarted;
      assert.equal(assertPassed(r), 1);
      assert.match(r.err, /KPIP-LIFECYCLE done: \d+ writes over [2-9] sessions, [0-4] re-run/);
    } finally {
      await k.dispose();
    }
  });
});
