import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { klass, removeHome, startKernel, withKernel } from "./harness.js";

const MAX = Number.MAX_SAFE_INTEGER;

describe("numbers past 2^53 never reach an answer, and an answer that cannot be encoded never ends the kernel", () => {
  it("resource.alloc past 2^53 - 1 in all is RESOURCE; resource.query still answers", async () => {
    await withKernel({}, async (t) => {
      const p = await t.persona("hoarder", [
        { ops: ["resource.alloc", "resource.query"], targets: ["persona://hoarder/**", "persona://hoarder"] },
      ]);
      const c = await t.connect(p.identity, [p.token]);
      await c.call("resource.alloc", "persona://hoarder", { resource: "beans", amount: MAX });
      await assert.rejects(
        c.call("resource.alloc", "persona://hoarder", { resource: "beans", amount: MAX }),
        klass("RESOURCE", "2^53"),
      );
      await assert.rejects(c.call("resource.alloc", "persona://hoarder", { resource: "beans", amount: 1 }), klass("RESOURCE"));
      const q = await c.call("resource.query", "persona://hoarder");
      assert.equal(q.status, "SUCCESS");
      assert.equal((await (await t.admin()).system.health()).status, "ok");
    });
  });

  it("compute.submit's timeoutMs (or a context deadline) is cut to maxRuntimeMs: op.status answers a deadline any peer decodes", async () => {
    await withKernel({ maxRuntimeMs: 60_000 }, async (t) => {
      const p = await t.persona("timer", [
        { ops: ["compute.submit", "op.status", "op.list"], targets: ["op://**", "kernel://"] },
      ]);
      const c = await t.connect(p.identity, [p.token]);
      const before = Date.now();
      for (const timeoutMs of [MAX, 2 ** 31 + 5, 30_000]) {
        const sub = await c.call("compute.submit", "op://command/true", { args: [], timeoutMs });
        const id = (sub.payload as { op: string }).op;
        const st = (await c.call("op.status", id)).payload as { deadline: number; state: string };
        assert.ok(Number.isSafeInteger(st.deadline) && st.deadline <= Date.now() + 60_000, `deadline ${st.deadline}`);
        assert.ok(st.deadline >= before + Math.min(timeoutMs, 60_000) - 1000, "a timeout within the cap is kept");
      }
      assert.equal((await c.call("op.list", "kernel://")).status, "SUCCESS");
    });
  });

  it("maxRuntimeMs past one Node timer's reach is a ConfigError", async () => {
    await assert.rejects(startKernel({ maxRuntimeMs: 2 ** 31 }), /maxRuntimeMs must be at most/);
  });

  it("an answer a handler filled with a number past 2^53 is FAILURE INTERNAL, on the record, and the kernel serves on", async () => {
    const t = await startKernel({}, undefined, (k) =>
      k.register({
        name: "bad",
        ops: [
          {
            op: "bad.big",
            description: "Answers a number no peer can decode (a bug an embedder could make).",
            targets: ["kernel"],
            args: {},
            idempotent: true,
            effects: false,
            handler: () => ({ status: "SUCCESS", payload: { n: 2 ** 60 } }),
          },
        ],
      }),
    );
    try {
      const c = await t.admin();
      await assert.rejects(c.call("bad.big", "kernel://"), klass("INTERNAL", "could not be encoded"));
      // The session and the kernel go on.
      assert.equal((await c.system.health()).status, "ok");
      await assert.rejects(c.call("bad.big", "kernel://"), klass("INTERNAL"));
      const withheld = t.k.inspect
        .queryAudit({ limit: 10_000 })
        .filter((r) => r.op === "session.response" && (r.message ?? "").startsWith("RESPONSE_UNENCODABLE"));
      // The client retries an INTERNAL answer: every attempt ran, and each withheld answer is on the record.
      assert.ok(withheld.length >= 2, `${withheld.length} records`);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
