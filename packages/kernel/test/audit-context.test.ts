import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { KpipError } from "@kpip/client";
import { generateIdentity } from "@kpip/protocol";
import { addPersonaKey, kernelForSuite } from "./harness.js";

const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

/** `kpip audit query --json` as a real process: one object per line. */
function auditQuery(home: string, ...args: string[]): Record<string, unknown>[] {
  const r = spawnSync(process.execPath, [MAIN, "audit", "query", "--home", home, "--json", ...args], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l));
}

describe("the audit record keeps the context a decision was made in", () => {
  const s = kernelForSuite();

  it("records context.execution, context.domain and ATTEST measurements, and kpip audit query --json shows them", async () => {
    const identity = generateIdentity("dom");
    addPersonaKey(s.t, "dom", identity.publicKey);
    const m = await s.admin.tokens.mint("dom", {
      rights: [{ ops: ["system.health"], targets: ["kernel://"] }],
      ttlMs: 3_600_000,
      domains: ["lab"],
    });
    const c = await s.t.connect(identity, [m.token], { measurements: { binary: "sha256:abc", build: 7 } });
    await c.call("system.health", "kernel://", {}, { domain: "lab", execution: "run-42" });
    await assert.rejects(
      c.call("system.health", "kernel://", {}, { domain: "prod", execution: "run-43" }),
      (e) => e instanceof KpipError && e.errorClass === "PERMISSION",
    );
    await c.close();
    const rows = auditQuery(s.t.home, "--persona", "dom");
    const open = rows.find((r) => r.op === "session.open");
    assert.deepEqual(open?.measurements, { binary: "sha256:abc", build: 7 });
    const allowed = rows.find((r) => r.op === "system.health" && r.status === "SUCCESS");
    const refused = rows.find((r) => r.op === "system.health" && r.status === "FAILURE");
    assert.deepEqual([allowed?.domain, allowed?.execution], ["lab", "run-42"]);
    assert.deepEqual([refused?.domain, refused?.execution, refused?.errorClass], ["prod", "run-43", "PERMISSION"]);
    const v = spawnSync(process.execPath, [MAIN, "audit", "verify", "--home", s.t.home], { encoding: "utf8" });
    assert.equal(v.status, 0, `the chain with the new fields verifies: ${v.stdout}${v.stderr}`);
  });
});
