import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { pino } from "pino";
import { createLogger, humanLines } from "../src/log.js";

/** Captures what a logger writes to stderr (pino writes synchronously to its destination). */
function captureStderr(f: () => void): string {
  const write = process.stderr.write;
  let out = "";
  process.stderr.write = ((chunk: string | Uint8Array) => {
    out += String(chunk);
    return true;
  }) as typeof process.stderr.write;
  try {
    f();
  } finally {
    process.stderr.write = write;
  }
  return out;
}

describe("kernel logs", () => {
  it("at a terminal: one readable line per entry, time, level, message and fields", () => {
    const out = captureStderr(() => createLogger("info", true).warn({ sessions: 3, socket: "/run/k.sock" }, "drain timed out"));
    assert.match(out, /^\d\d:\d\d:\d\d\.\d{3} WARN {2}drain timed out sessions=3 socket=\/run\/k\.sock\n$/);
  });

  it("below its level a logger writes nothing", () => {
    const human = captureStderr(() => createLogger("warn", true).info("not shown"));
    assert.equal(human, "");
  });

  it("at a terminal: text in fields cannot forge lines or fields, nor drive the terminal", () => {
    let out = "";
    const log = pino({ level: "info" }, humanLines({ write: (t: string) => (out += t) }));
    log.warn(
      {
        agent: "a1\n12:00:00.000 ERROR forged line admin=yes",
        err: "spawn x ENOENT level=FATAL",
        title: "\u001b]0;owned\u0007\u009b2J",
        bidi: "abc\u202edcba",
        plain: "/run/k.sock",
      },
      "agent failed\rto start",
    );
    assert.equal(out.split("\n").length, 2, out);
    assert.ok(!/[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/.test(out.slice(0, -1)), JSON.stringify(out));
    assert.match(out, / WARN {2}agent failed\\u\{d\}to start /);
    assert.match(out, / agent="a1\\n12:00:00\.000 ERROR forged line admin=yes" /);
    assert.match(out, / err="spawn x ENOENT level=FATAL" /);
    assert.match(out, / title="\\u001b\]0;owned\\u0007\\u\{9b\}2J" /);
    assert.match(out, / bidi="abc\\u\{202e\}dcba" plain=\/run\/k\.sock\n$/);
  });
});
