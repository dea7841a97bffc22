import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { encodeMessage, FrameReader, framePieces, type Message, peerDecodeLimits } from "@kpip/protocol";
import { warmFramePath } from "../src/kernel/warm-frames.js";

/*
 * The kernel runs its frame codec on a heartbeat's shapes at start (warm-frames.ts), so that the
 * first PING/PONG of a session does not deoptimize the codec optimized on requests alone
 * (BENCHMARKS.md, round twenty-eight). It must leave nothing behind.
 */

const warmUrl = new URL("../src/kernel/warm-frames.js", import.meta.url).href;
const protocolUrl = import.meta.resolve("@kpip/protocol");

/**
 * A process that optimizes the codec on REQUEST in, RESPONSE out, then meets a PING and answers a
 * PONG: the functions V8 deoptimized from then on, as `--trace-deopt` names them (an anonymous
 * one as "(anonymous)"). After the marker the process runs the codec alone, so every one counts,
 * whatever the codec's functions are named.
 *
 * A deoptimization is V8's own doing, with no public API: its trace is the one way to see one, so
 * this test reads it and is pinned to what it reads. What would make the reading vary is pinned
 * too: compiles on the main thread (--no-concurrent-recompilation: what is optimized when is the
 * same every run, however busy the machine), one optimizing tier (--no-maglev: node 22 on turns
 * Maglev on, a tier with thresholds of its own; node 20 runs TurboFan alone) reached after a set
 * budget, the trace written by the thread that runs the code, each line as it is made (so in order
 * with the marker on the same stdout). A V8 that traces or optimizes otherwise fails the control
 * below, loudly: never a pass that checked nothing.
 */
function codecDeopts(warm: boolean): string[] {
  const script = `
    const p = await import(${JSON.stringify(protocolUrl)});
    const { warmFramePath } = await import(${JSON.stringify(warmUrl)});
    if (${warm}) warmFramePath();
    const intent = p.encodeCanonical({ op: "bench.noop", target: "kernel://" });
    const req = p.encodeMessage({ type: "REQUEST", body: { version: 1, persona: "admin", id: 7, intent, context: { persona: "admin" }, caps: [1] } });
    const reader = new p.FrameReader(1 << 16);
    reader.decodeLimits = p.peerDecodeLimits;
    let n = 0;
    const take = () => { n++; return true; };
    const fail = (e) => { throw e; };
    for (let i = 0; i < 30000; i++) {
      reader.push(req, take, fail);
      p.framePieces({ type: "RESPONSE", body: { version: 1, id: i, status: "SUCCESS", payload: { ok: true } } }, 1, p.COPY_BELOW);
    }
    process.stdout.write("\\n### heartbeat\\n");
    reader.push(p.encodeMessage({ type: "PING", body: { seq: 1 } }), take, fail);
    p.framePieces({ type: "PONG", body: { seq: 1 } }, 0);
    reader.push(p.encodeMessage({ type: "PONG", body: { seq: 1 } }), take, fail);
    p.framePieces({ type: "PING", body: { seq: 2 } }, 0);
    if (n !== 30002) throw new Error("decoded " + n);
  `;
  const r = spawnSync(
    process.execPath,
    [
      "--trace-deopt",
      "--no-concurrent-recompilation",
      "--no-maglev",
      "--interrupt-budget=32768",
      "--input-type=module",
      "-e",
      script,
    ],
    { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 },
  );
  assert.equal(r.status, 0, r.stderr);
  const after = r.stdout.slice(r.stdout.indexOf("### heartbeat"));
  assert.ok(after.startsWith("### heartbeat"), "the child reached the heartbeat");
  // "[bailout (kind: deopt-eager, reason: wrong map): begin. deoptimizing 0x…, <JSFunction framePieces (sfi = …)>, …"
  return after
    .split("\n")
    .filter((l) => l.includes("bailout") && l.includes("deoptimizing"))
    .map((l) => /<JSFunction ([^ >]*)/.exec(l)?.[1] || "(anonymous)");
}

describe("the frame path's warm-up", () => {
  it("a heartbeat after requests deoptimizes the codec without the warm-up, and nothing with it", () => {
    // The control: what the warm-up is for still happens in this V8 without it, and its trace is read.
    const cold = codecDeopts(false);
    assert.ok(
      cold.length > 0,
      `without the warm-up the first PING/PONG deoptimizes the codec: none seen in node ${process.version}'s trace, so this V8 optimizes or traces otherwise and the test cannot tell whether the warm-up works in it`,
    );
    assert.ok(cold.includes("framePieces") && cold.includes("decodeMessage"), `the codec's own functions: ${cold.join(", ")}`);
    assert.deepEqual(codecDeopts(true), []);
  });

  it("leaves no file, no handle and no frame behind, and the shared writer still frames answers", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-warm-"));
    const cwd = process.cwd();
    const handles = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().length;
    try {
      process.chdir(dir);
      warmFramePath();
      warmFramePath(); // once a process
    } finally {
      process.chdir(cwd);
    }
    assert.deepEqual(readdirSync(dir), []);
    assert.equal((process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().length, handles);
    rmSync(dir, { recursive: true });
    // An answer framed into the shared writer after the warm-up is the answer's frame.
    const answer: Message = { type: "RESPONSE", body: { version: 1, id: 9, status: "SUCCESS", payload: { n: 1 } } };
    const { pieces } = framePieces(answer, 3, 16 * 1024);
    const bytes = Buffer.concat(pieces);
    assert.deepEqual(bytes, encodeMessage(answer, 3));
    const seen: Message[] = [];
    const reader = new FrameReader(1 << 16);
    reader.decodeLimits = peerDecodeLimits;
    reader.push(
      bytes,
      (m) => {
        seen.push(m);
        return true;
      },
      (e) => {
        throw e;
      },
    );
    assert.deepEqual(seen, [answer]);
  });
});
