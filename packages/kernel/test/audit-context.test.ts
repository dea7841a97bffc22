import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { KernelClient, KpipError } from "@kpip/client";
import {
  type CborMap,
  encodeCanonical,
  encodeIntent,
  encodeMessage,
  generateIdentity,
  MAX_MEASUREMENTS_BYTES,
  MessageError,
} from "@kpip/protocol";
import { addPersonaKey, kernelForSuite, until } from "./harness.js";
import { allAudit, RawPeer, requestFrame } from "./wire.js";

const execFileAsync = promisify(execFile);
const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

/**
 * `kpip audit query --json` as a real process: one object per line. Run without blocking this
 * process: the kernel under test runs in it, and indexes its last records once it is quiet.
 */
async function auditQuery(home: string, ...args: string[]): Promise<Record<string, unknown>[]> {
  const r = await execFileAsync(process.execPath, [MAIN, "audit", "query", "--home", home, "--json", ...args], {
    encoding: "utf8",
    maxBuffer: 64 * 1024 * 1024,
  });
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
    const rows = await auditQuery(s.t.home, "--persona", "dom");
    const open = rows.find((r) => r.op === "session.open");
    assert.deepEqual(open?.measurements, { binary: "sha256:abc", build: 7 });
    const allowed = rows.find((r) => r.op === "system.health" && r.status === "SUCCESS");
    const refused = rows.find((r) => r.op === "system.health" && r.status === "FAILURE");
    assert.deepEqual([allowed?.domain, allowed?.execution], ["lab", "run-42"]);
    assert.deepEqual([refused?.domain, refused?.execution, refused?.errorClass], ["prod", "run-43", "PERMISSION"]);
    // Rejects (non-zero exit) with its output if the chain with the new fields does not verify.
    await execFileAsync(process.execPath, [MAIN, "audit", "verify", "--home", s.t.home], { encoding: "utf8" });
  });

  it("refuses ATTEST measurements over MAX_MEASUREMENTS_BYTES once the signature holds: fatal TOO_LARGE, no session, nothing of them on the record", async () => {
    const identity = generateIdentity("meas");
    addPersonaKey(s.t, "meas", identity.publicKey);
    const attest = async (measurements: CborMap) => {
      const p = await RawPeer.connect(s.t.k.socketPath);
      const { bytes } = await p.hello(identity);
      p.sendMessage({ type: "ATTEST", body: { signature: p.sign(identity, bytes), tokens: [], measurements } });
      return p;
    };
    const fits = { blob: new Uint8Array(MAX_MEASUREMENTS_BYTES - 16) };
    assert.ok(encodeCanonical(fits).length <= MAX_MEASUREMENTS_BYTES);
    const ok = await attest(fits);
    await ok.next("WELCOME");
    ok.close();
    // A byte past the bound, and a map of ~1 MiB (under the ATTEST frame bound): no WELCOME.
    for (const n of [MAX_MEASUREMENTS_BYTES, 1000 * 1024]) {
      const big = { blob: new Uint8Array(n) };
      const p = await attest(big);
      const e = await p.next("ERROR", 30_000);
      assert.deepEqual([e.body.class, e.body.code, e.body.fatal], ["PROTOCOL", "TOO_LARGE", true]);
      await until(() => p.closed);
    }
    const opened = allAudit(s.t.k).filter((r) => r.op === "session.open" && r.persona === "meas");
    assert.equal(opened.length, 1, "only the session whose measurements fit opened");
    // The refusals came after a signature that verified: their records name the persona, not "claimed".
    const refusedAt = allAudit(s.t.k).filter((r) => r.op === "session.handshake" && /TOO_LARGE/.test(r.message ?? ""));
    assert.equal(refusedAt.length, 2);
    for (const r of refusedAt) {
      assert.equal(r.persona, "meas");
      assert.doesNotMatch(r.message ?? "", /not verified/);
    }
    assert.ok(allAudit(s.t.k).every((r) => (r.measurements?.length ?? 0) <= MAX_MEASUREMENTS_BYTES));
    // The client refuses them before connecting, naming the bound.
    await assert.rejects(
      KernelClient.connect({
        socket: s.t.k.socketPath,
        identity,
        measurements: { blob: new Uint8Array(MAX_MEASUREMENTS_BYTES) },
      }),
      (e) => e instanceof RangeError && /at most 4096/.test(e.message),
    );
  });

  it("refuses a context whose domain, execution or traceparent holds a control character: fatal BAD_FIELD, the text never reaches the record", async () => {
    const before = allAudit(s.t.k).length;
    const p = await RawPeer.admin(s.t);
    // A terminal escape and a forged line, as a persona might hope an operator reads them in `kpip audit show`.
    p.send(
      requestFrame(1, { op: "system.health", target: "kernel://", args: {} }, { domain: "lab\u001b[2J\nstatus       SUCCESS" }),
    );
    const e = await p.next("ERROR", 30_000);
    assert.deepEqual([e.body.class, e.body.code, e.body.fatal], ["PROTOCOL", "BAD_FIELD", true]);
    assert.match(e.body.message, /request\.context\.domain must be .*control/);
    await until(() => p.closed, 10_000, "the session closed");
    const added = allAudit(s.t.k).slice(before);
    assert.ok(added.length > 0, "the refused session is on the record");
    assert.ok(!added.some((r) => JSON.stringify(r).includes("\\u001b")), "no record carries the escape");
    // The kernel serves everyone else.
    assert.equal((await s.admin.call("system.health", "kernel://")).status, "SUCCESS");
  });

  it("refuses a context or HELLO.client holding a zero-width, invisible or line-separator character: fatal BAD_FIELD, the text never reaches the record; the client refuses it before sending", async () => {
    // Each draws as nothing (or as a line break) at a terminal: a name that hides words, or looks like another.
    const texts = [
      "ops\u200bteam",
      "run-1\u2028status       SUCCESS",
      "lab\u{e0041}\u{e0042}",
      "pro\u00adduction",
      "\ufefflab",
      "\u3164",
      "l\ufe0fab",
      "a\u2060b",
    ];
    const hidden = (r: unknown) => texts.some((t) => JSON.stringify(r).includes(JSON.stringify(t).slice(1, -1)));
    const before = allAudit(s.t.k).length;
    for (const text of texts) {
      for (const field of ["domain", "execution", "traceparent"] as const) {
        const p = await RawPeer.admin(s.t);
        const intent = encodeIntent({ op: "system.health", target: "kernel://", args: {} });
        const context = { persona: "admin", [field]: text };
        p.send(encodeMessage({ type: "REQUEST", body: { version: 1, persona: "admin", id: 1, intent, context, caps: [1] } }, 1));
        const e = await p.next("ERROR", 30_000);
        assert.deepEqual(
          [e.body.class, e.body.code, e.body.fatal],
          ["PROTOCOL", "BAD_FIELD", true],
          `${field} ${JSON.stringify(text)}`,
        );
        assert.match(e.body.message, new RegExp(`request\\.context\\.${field} must be .*invisible`));
        await until(() => p.closed, 10_000, "the session closed");
      }
      // HELLO.client, before any key is checked.
      const h = await RawPeer.connect(s.t.k.socketPath);
      h.send(
        encodeMessage({
          type: "HELLO",
          body: {
            versions: [1],
            persona: "admin",
            publicKey: Buffer.alloc(32, 1),
            instance: Buffer.alloc(16, 3),
            features: [],
            client: text,
          },
        }),
      );
      const e = await h.next("ERROR", 30_000);
      assert.deepEqual([e.body.code, e.body.fatal], ["BAD_FIELD", true]);
      // The client refuses it before sending: nothing reaches the kernel, the session goes on.
      const local = await s.admin.call("system.health", "kernel://", {}, { execution: text }).catch((x: unknown) => x);
      assert.ok(local instanceof MessageError && local.code === "BAD_FIELD", String(local));
    }
    assert.ok(!allAudit(s.t.k).slice(before).some(hidden), "no record carries the text");
    // Printable text of any script still passes.
    assert.equal(
      (await s.admin.call("system.health", "kernel://", {}, { execution: "run-42 実行 🚀", domain: "lab" })).status,
      "SUCCESS",
    );
  });
});
