import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Kernel } from "@kpip/kernel";
import { CommandWorker } from "@kpip/protocol/testing";
import { connectAdmin, DISPATCH } from "./run.js";

// A question about what retention pruned: an empty answer must not read as "nothing happened".
const cli = new CommandWorker(DISPATCH);
after(() => cli.close());

async function until<T>(f: () => T | undefined): Promise<T> {
  // A bound for a kernel that never prunes (a failure), not a guess at its speed.
  for (const end = Date.now() + 60_000; ; ) {
    const v = f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error("no pruning pass within 60 s");
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("a pruned log in the evidence", () => {
  it("audit timeline and query say on stderr that the log starts after pruned records, and from when", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-pruned-evidence-"));
    const opts = {
      home,
      logLevel: "silent" as const,
      sandbox: "none" as const,
      auditCheckpointEvery: 10,
      auditRetainRecords: 25,
    };
    try {
      let k = new Kernel(opts);
      await k.start();
      const c = await connectAdmin(home);
      await c.storage.write("obj://ws/planted", "payload");
      for (let i = 0; i < 80; i++) await c.system.health();
      await c.close();
      await k.stop();
      k = new Kernel(opts);
      await k.start();
      const first = await until(() => {
        const n = k.inspect.firstAuditSeq() ?? 1;
        return n > 1 ? n : undefined;
      });
      await k.stop();
      for (const args of [
        ["timeline", "--target", "obj://ws/planted"],
        ["query", "--op", "storage.write"],
      ]) {
        const r = await cli.run(["audit", ...args, "--json", "--home", home]);
        assert.equal(r.code, 0, r.err);
        assert.equal(r.out.trim(), "", "the write's records are gone");
        const notes = r.err
          .trim()
          .split("\n")
          .map((l) => JSON.parse(l) as { pruned?: { through: number; first: number; firstTime: string } });
        const pruned = notes.find((n) => n.pruned)?.pruned;
        assert.ok(pruned, `${args[0]} says the log was pruned: ${r.err}`);
        assert.ok(pruned.through >= first - 1, `${pruned.through} ≥ ${first - 1}`);
        assert.equal(pruned.first, pruned.through + 1);
        assert.ok(!Number.isNaN(Date.parse(pruned.firstTime)));
        const text = await cli.run(["audit", ...args, "--home", home]);
        assert.match(text.err, /records 1\.\.\d+ are not in this log \(pruned/);
      }
      // verify names whose acts with effects the pass pruned (the admin's write), from the record's span.
      const v = await cli.run(["audit", "verify", "--home", home]);
      assert.match(v.out, /pruned +records from \S+ to \S+; acts with effects among them: admin \d+/, v.out);
      const vj = await cli.run(["audit", "verify", "--json", "--home", home]);
      const span = (JSON.parse(vj.out) as { prunedBy?: { span?: { personas?: Record<string, { intents: number }> } } }).prunedBy
        ?.span;
      assert.ok((span?.personas?.admin?.intents ?? 0) >= 1, vj.out);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
