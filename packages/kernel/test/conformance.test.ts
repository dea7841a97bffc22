import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { type KernelClient, RequestTooLargeError } from "@kpip/client";
import { generateIdentity } from "@kpip/protocol";
import { verifyAudit } from "../src/audit/verify.js";
import { PYTHON_COLUMNS, type PythonRun, python, pythonMark, runPythonConformance } from "./conformance/python.js";
import {
  CONFORMANCE_LIMITS,
  FEATURES,
  startConformanceKernel,
  TRANSPORTS,
  type TransportUnderTest,
} from "./conformance/transports.js";
import { klass, removeHome, sandboxSkip, type TestKernel } from "./harness.js";

const root = fileURLToPath(new URL("../../../../", import.meta.url));

/**
 * KPIP §4: transport choice MUST NOT affect semantics. One set of behavioural tests, run
 * unchanged over every transport in conformance/transports.ts; each `it` is one row of the
 * feature × transport table in the README.
 */
for (const tr of TRANSPORTS) {
  describe(`conformance over ${tr.name}`, () => {
    let u: Awaited<ReturnType<TransportUnderTest["start"]>>;
    let admin: KernelClient;
    before(async () => {
      u = await tr.start();
      admin = await u.admin();
    });
    after(async () => {
      await u.stop();
    });

    it(FEATURES.handshake, async () => {
      assert.equal(admin.transport, tr.transport);
      assert.deepEqual(admin.handles, [1]);
      assert.equal((await admin.system.health()).status, "ok");
      await tr.checkSession?.(admin);
    });

    it(FEATURES.system, async () => {
      const d = await admin.system.describe();
      assert.ok(d.ops.some((o) => o.op === "storage.write"));
      const info = (await admin.call("system.info", "kernel://")).payload as { kernel: string };
      assert.equal(typeof info.kernel, "string");
    });

    it(FEATURES.storage, async () => {
      await admin.storage.write("obj://conf/a", "alpha");
      await admin.storage.write("obj://conf/b", Buffer.from([0, 1, 2, 255]));
      assert.equal(Buffer.from((await admin.storage.read("obj://conf/a")).data).toString(), "alpha");
      assert.deepEqual([...(await admin.storage.read("obj://conf/b")).data], [0, 1, 2, 255]);
      assert.equal((await admin.storage.stat("obj://conf/a")).size, 5);
      const page = await admin.call("storage.list", "obj://conf", { limit: 1 });
      assert.equal(page.status, "PARTIAL");
      await admin.storage.delete("obj://conf/a");
      await assert.rejects(admin.storage.read("obj://conf/a"), klass("SEMANTIC"));
    });

    it(FEATURES.tokens, async () => {
      const bob = await u.persona("bob", [{ ops: ["storage.read"], targets: ["obj://conf/**"] }]);
      const c = await u.connect(bob.identity, [bob.token]);
      assert.deepEqual([...(await c.storage.read("obj://conf/b")).data], [0, 1, 2, 255]);
      const ins = (await admin.tokens.inspect(bob.id, bob.token)) as { status: string };
      assert.equal(ins.status, "valid");
      await admin.tokens.revoke(bob.id);
      await assert.rejects(c.storage.read("obj://conf/b"), klass("CAPABILITY"));
      await c.close();
    });

    it(FEATURES.events, async () => {
      const sub = await admin.events.subscribe("topic://conf/*");
      await admin.events.emit("topic://conf/x", { n: 42 });
      for await (const e of sub) {
        assert.deepEqual([e.topic, e.data], ["topic://conf/x", { n: 42 }]);
        break;
      }
    });

    it(FEATURES.deferred, async () => {
      const d = await admin.compute.task("square", 9);
      assert.equal(typeof d.id, "string");
      assert.equal(await admin.ops.wait(d), 81);
      assert.equal((await admin.ops.status(d)).state, "succeeded");
    });

    it(FEATURES.resources, async () => {
      const a = await admin.resources.alloc("admin", "gpu", 2);
      const q = (await admin.resources.query("persona://admin")) as { usage: Record<string, number> };
      assert.equal(q.usage.gpu, 2);
      await admin.resources.free("admin", a.allocation);
    });

    it(FEATURES.agents, { skip: sandboxSkip }, async () => {
      await admin.agents.spawn("sleep", `conf-${tr.transport}`, { args: ["20"], rights: [], lifetimeMs: 20_000 });
      assert.equal((await admin.agents.status(`agent://sleep/conf-${tr.transport}`)).state, "running");
      await admin.agents.kill(`agent://sleep/conf-${tr.transport}`);
    });

    it(FEATURES.errors, async () => {
      await assert.rejects(admin.call("no.such.op", "kernel://"), klass("SEMANTIC"));
      const eve = await u.persona(
        "eve",
        [{ ops: ["system.health", "resource.alloc"], targets: ["kernel://", "persona://eve"] }],
        {
          gpu: 1,
        },
      );
      const c = await u.connect(eve.identity, [eve.token]);
      await assert.rejects(c.resources.alloc("eve", "gpu", 2), klass("RESOURCE"));
      await assert.rejects(c.storage.read("obj://conf/b"), klass("PERMISSION"));
      await assert.rejects(c.storage.read("obj://conf/b", { caps: [] }), klass("CAPABILITY"));
      await c.close();
      await assert.rejects(u.connect(generateIdentity("nobody"), []), klass("AUTH"));
    });

    it(FEATURES.limits, async () => {
      // Over the negotiated body limit: refused (locally or by the kernel), and service goes on.
      const huge = Buffer.alloc(CONFORMANCE_LIMITS.maxBodyBytes + 1024, 1);
      await assert.rejects(
        admin.storage.write("obj://conf/huge", huge),
        (e: unknown) => e instanceof RequestTooLargeError || klass("RESOURCE")(e) || klass("PROTOCOL")(e),
      );
      const fresh = await u.admin();
      assert.equal((await fresh.system.health()).status, "ok");
      await assert.rejects(fresh.storage.read("obj://conf/huge"), klass("SEMANTIC"));
      admin = fresh;
    });

    it(FEATURES.large, async () => {
      const big = Buffer.alloc(CONFORMANCE_LIMITS.largePayload);
      for (let i = 0; i < big.length; i += 4) big.writeUInt32BE(i, i);
      await admin.storage.write("obj://conf/big", big);
      const back = (await admin.storage.read("obj://conf/big")).data;
      assert.ok(Buffer.from(back).equals(big), "large payload round-trips intact");
      await tr.checkLarge?.(u, admin);
    });

    it(FEATURES.audit, async () => {
      await admin.storage.write("obj://conf/audited", "x");
      // The outcome record commits before the response is sent, so it is already there.
      const v = verifyAudit(u.k.inspect);
      assert.ok(v.ok, v.firstBad?.reason);
      const rows = u.k.inspect.queryAudit({ op: "storage.write", limit: 50 });
      assert.ok(rows.some((r) => r.target === "obj://conf/audited" && r.phase === "outcome" && r.status === "SUCCESS"));
      assert.ok(
        u.k.inspect.queryAudit({ op: "session.open", limit: 500 }).some((r) => r.message === tr.transport),
        "the session's transport is recorded",
      );
    });
  });
}

/**
 * The same features with the Python client as the client (python/tests/conformance.py): one
 * kernel, one Python process running every column's suite; each `it` is the outcome of one
 * Python test, and the audit row also checks the kernel's side of what that test did.
 */
let py: PythonRun | undefined;
describe("conformance with the Python client", () => {
  let t: TestKernel | undefined;
  before(async () => {
    if (!python.path) return;
    t = await startConformanceKernel();
    py = await runPythonConformance(t);
  });
  after(async () => {
    if (!t) return;
    await t.stop();
    removeHome(t.home);
  });
  const skip = python.path || python.required ? false : `SKIPPED — Python client not run: ${python.why}`;

  for (const col of PYTHON_COLUMNS) {
    describe(`conformance over ${col.name}`, () => {
      for (const [key, feature] of Object.entries(FEATURES)) {
        it(feature, { skip: skip || (key === "agents" && sandboxSkip) }, () => {
          assert.ok(py && t, python.why);
          const o = py.outcomes.find((x) => x.suite === col.suite && x.feature === key);
          assert.ok(o, `python/tests/conformance.py reported nothing for ${col.suite}.test_${key}:\n${py.stderr}`);
          assert.equal(o.outcome, "ok", o.detail);
          if (key !== "audit") return;
          const v = verifyAudit(t.k.inspect);
          assert.ok(v.ok, v.firstBad?.reason);
          const rows = t.k.inspect.queryAudit({ op: "storage.write", limit: 500 });
          assert.ok(rows.some((r) => r.target === `obj://${o.ns}/audited` && r.phase === "outcome" && r.status === "SUCCESS"));
          const opened = t.k.inspect.queryAudit({ op: "session.open", limit: 500 });
          assert.ok(
            opened.some((r) => r.persona === `bob-${o.ns}` && r.message === "uds"),
            "the session's transport is recorded",
          );
        });
      }
    });
  }
});

describe("README transport table", () => {
  it("lists every conformance feature for every transport, as the suite runs them", () => {
    const readme = readFileSync(`${root}README.md`, "utf8");
    const start = readme.indexOf("<!-- conformance-table -->");
    const end = readme.indexOf("<!-- /conformance-table -->");
    assert.ok(start >= 0 && end > start, "README has the conformance table markers");
    const lines = readme
      .slice(start, end)
      .split("\n")
      .filter((l) => l.startsWith("|"));
    const header = (lines[0] ?? "")
      .split("|")
      .map((c) => c.trim())
      .filter(Boolean);
    assert.deepEqual(header.slice(1), [...TRANSPORTS.map((t) => t.name), ...PYTHON_COLUMNS.map((c) => c.name)]);
    const rows = lines.slice(2).map((l) =>
      l
        .split("|")
        .map((c) => c.trim())
        .filter(Boolean),
    );
    assert.deepEqual(
      rows.map((r) => r[0]),
      Object.values(FEATURES),
    );
    for (const o of py?.outcomes ?? [])
      assert.ok(
        o.feature in FEATURES && PYTHON_COLUMNS.some((c) => c.suite === o.suite),
        `python/tests/conformance.py ran ${o.suite}.test_${o.feature}, which is no cell of the table`,
      );
    for (const [i, r] of rows.entries()) {
      assert.deepEqual(
        r.slice(1, 1 + TRANSPORTS.length),
        TRANSPORTS.map(() => "✓"),
        r[0],
      );
      // The Python columns: the mark each feature earned in the run above (not written by hand).
      const key = Object.keys(FEATURES)[i];
      if (py)
        assert.deepEqual(
          r.slice(1 + TRANSPORTS.length),
          PYTHON_COLUMNS.map((c) => pythonMark(py?.outcomes.find((o) => o.suite === c.suite && o.feature === key))),
          `${r[0]} (Python columns)`,
        );
    }
  });
});
