import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createLogger } from "../src/log.js";

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
});
