import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Kernel } from "@kpip/kernel";
import { CommandWorker } from "@kpip/protocol/testing";
import { connectAdmin, DISPATCH } from "./run.js";

// What exactly was written, when the record cannot keep the bytes: an intent past
// auditIntentMaxBytes (64 KiB) keeps its hash only, which is the hash of the whole intent.
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

describe("the bytes of a write too large for its record", () => {
  it("a write whose intent the record cannot keep names its body's SHA-256 on its outcome; one the record keeps needs none", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-body-evidence-"));
    // Inline (under objectInlineBytes, 128 KiB) and in the file store; and one small enough to keep.
    const bodies: Record<string, Buffer> = {
      "obj://ws/mid": Buffer.alloc(100_000, 1),
      "obj://ws/big": Buffer.alloc(200_000, 2),
      "obj://ws/small": Buffer.from("kept in the intent"),
    };
    try {
      const k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      const c = await connectAdmin(home);
      for (const [target, data] of Object.entries(bodies)) await c.storage.write(target, data);
      await c.close();
      await k.stop();
      const r = await cli.run(["audit", "timeline", "--json", "--op", "storage.write", "--home", home]);
      assert.equal(r.code, 0, r.err);
      const rows = r.out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { seq: number; target: string });
      assert.equal(rows.length, 3);
      for (const row of rows) {
        const s = await cli.run(["audit", "show", String(row.seq), "--json", "--home", home]);
        assert.equal(s.code, 0, s.err);
        const shown = JSON.parse(s.out) as { intent: unknown; outcomeRecord: { detail: { sha256?: string; size: number } } };
        const data = bodies[row.target] as Buffer;
        const detail = shown.outcomeRecord.detail;
        assert.equal(detail.size, data.length);
        if (row.target === "obj://ws/small") {
          assert.ok(shown.intent, "a small write's bytes are in its intent");
          assert.equal(detail.sha256, undefined, "and its record adds no hash");
        } else {
          assert.equal(shown.intent ?? null, null, `${row.target}: the intent is past auditIntentMaxBytes`);
          assert.equal(detail.sha256, sha256(data), `${row.target}: its outcome names the body's SHA-256`);
        }
      }
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
