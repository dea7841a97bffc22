import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { KpipError } from "@kpip/client";
import { boundedMessage, FAILURE_MESSAGE_MAX_BYTES } from "../src/pipeline/context.js";
import { startKernel, type TestKernel } from "./harness.js";
import { allAudit } from "./wire.js";

/** What the kernel's FAILURE messages may take of text a request chose (PROTOCOL §6.8). */
const MESSAGE_MAX_BYTES = FAILURE_MESSAGE_MAX_BYTES;

describe("FAILURE messages quoting what a request chose", () => {
  let t: TestKernel;

  it("a request naming a 200 KB argument (or limit) is answered SEMANTIC with a bounded message, and its record keeps no bulk text", async () => {
    t = await startKernel({});
    try {
      const p = await t.persona("narrow", [
        { ops: ["storage.read", "token.mint"], targets: ["obj://ws1/**", "persona://narrow/**"] },
      ]);
      const c = await t.connect(p.identity, [p.token]);
      const big = "x".repeat(200_000);
      const before = allAudit(t.k).length;
      const asks: [string, string, Record<string, unknown>][] = [
        ["storage.read", "obj://ws1/a", { [big]: 1 }],
        [
          "token.mint",
          "persona://narrow/sub",
          { rights: [{ ops: ["storage.read"], targets: ["obj://ws1/a"] }], ttlMs: 1000, limits: { [big]: "text" } },
        ],
      ];
      for (const [op, target, args] of asks) {
        // Answered as the protocol allows (the client refused a message past text(65536) as a
        // protocol violation and closed the session), the class the request earned.
        await assert.rejects(
          c.call(op, target, args as never),
          (e) => e instanceof KpipError && e.errorClass === "SEMANTIC" && Buffer.byteLength(e.message) <= MESSAGE_MAX_BYTES + 200,
        );
      }
      // The session goes on.
      await assert.rejects(
        c.call("storage.read", "obj://ws1/none"),
        (e) => e instanceof KpipError && e.errorClass === "SEMANTIC",
      );
      const rows = allAudit(t.k)
        .slice(before)
        .filter((r) => r.persona === "narrow" && r.status === "FAILURE" && r.target !== "obj://ws1/none");
      assert.equal(rows.length, 2, JSON.stringify(rows.map((r) => [r.op, r.phase])));
      for (const r of rows) {
        const n = Buffer.byteLength(r.message ?? "");
        assert.ok(n <= MESSAGE_MAX_BYTES, `${r.op} ${r.phase} record keeps a ${n}-byte message`);
        assert.match(r.message ?? "", /…$/, "a cut message says it was cut");
      }
    } finally {
      await t.stop();
    }
  });
});

describe("boundedMessage", () => {
  it("cuts on a character, never inside one, within the bound", () => {
    for (const ch of ["é", "€", "😀", "a"]) {
      const m = boundedMessage(`no argument ${ch.repeat(5000)}`);
      assert.ok(Buffer.byteLength(m) <= FAILURE_MESSAGE_MAX_BYTES, `${ch}: ${Buffer.byteLength(m)}`);
      assert.ok(!m.includes("\ufffd") && m.endsWith("…"), ch);
    }
    assert.equal(boundedMessage("short"), "short");
  });
});
