import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Kernel, RootKeys } from "@kpip/kernel";
import { CommandWorker } from "@kpip/protocol/testing";
import { DISPATCH } from "./run.js";

// Who rotated or retired a root key? The kernel sees the key file change; the CLI that changed it
// says who it ran as, on the record.
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());

describe("root key changes in the evidence", () => {
  it("kpip token rotate-key and retire-key put who ran them on the audit record, with or without a kernel running", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-key-evidence-"));
    try {
      let k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      await k.stop();
      const first = (JSON.parse(readFileSync(RootKeys.path(home), "utf8")) as { current: string }).current;
      // No kernel: journalled, recorded at the next start.
      const rotated = await cli.run(["token", "rotate-key", "--json", "--home", home]);
      assert.equal(rotated.code, 0, rotated.err);
      const kid = (JSON.parse(rotated.out) as { kid: string }).kid;
      k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      // A kernel running: journalled beside it.
      const retired = await cli.run(["token", "retire-key", first, "--home", home]);
      assert.equal(retired.code, 0, retired.err);
      await k.stop();
      k = new Kernel({ home, logLevel: "silent", sandbox: "none" });
      await k.start();
      await k.stop();
      const uid = String(process.getuid?.() ?? "?");
      for (const [op, id] of [
        ["token.rotate-key", kid],
        ["token.retire-key", first],
      ] as const) {
        const r = await cli.run(["audit", "query", "--op", op, "--json", "--home", home]);
        assert.equal(r.code, 0, r.err);
        const rows = r.out
          .trim()
          .split("\n")
          .filter(Boolean)
          .map((l) => JSON.parse(l) as { phase: string; message: string });
        assert.equal(rows.length, 1, `${op} is on the record once: ${r.out}`);
        assert.equal(rows[0]?.phase, "offline");
        assert.ok(rows[0]?.message.includes(id), rows[0]?.message);
        assert.ok(rows[0]?.message.includes(`by kpip token (uid ${uid}`), rows[0]?.message);
      }
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
