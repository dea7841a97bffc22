import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { CommandWorker } from "@kpip/protocol/testing";
import { evidenceKernel } from "./evidence.js";
import { DISPATCH } from "./run.js";

// What did a hostile persona read, once the objects are overwritten and deleted? The read's
// record names the version it returned, not only the address.
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

describe("what a persona read, in the evidence", () => {
  it("storage.read's record names the generation it returned, and a file-store body's SHA-256", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-read-evidence-"));
    // Inline (in the database) and in the file store (objectInlineBytes, 128 KiB, and more).
    const secret1 = Buffer.from("the first secret");
    const secret2 = Buffer.alloc(200_000, 7);
    try {
      await evidenceKernel(home, async ({ admin, as }) => {
        const { client: asEve } = await as("eve", [{ ops: ["storage.read"], targets: ["obj://ws/**"] }]);
        await admin.storage.write("obj://ws/doc", secret1);
        await asEve.storage.read("obj://ws/doc");
        await admin.storage.write("obj://ws/doc", secret2);
        await asEve.storage.readRange("obj://ws/doc", 10, 100);
        // The evidence goes: the object is deleted, its body with it.
        await admin.storage.delete("obj://ws/doc");
      });
      const r = await cli.run(["audit", "timeline", "--json", "--op", "storage.read", "--persona", "eve", "--home", home]);
      assert.equal(r.code, 0, r.err);
      const rows = r.out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { detail: { generation?: number; sha256?: string } | null });
      assert.deepEqual(
        rows.map((x) => [x.detail?.generation, x.detail?.sha256]),
        [
          [1, undefined],
          [2, sha256(secret2)],
        ],
      );
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
