import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Kernel } from "@kpip/kernel";
import { encodeCanonical, generateIdentity, type Identity } from "@kpip/protocol";
import { connectAdmin, kpip } from "./run.js";

/** The kernel tests' hand-driven peer (compiled beside them): it sends intents no client would. */
interface RawPeer {
  handshake(identity: Identity, tokens?: Uint8Array[]): Promise<unknown>;
  request(id: number, intent: Uint8Array, opts: { persona: string; caps?: number[] }): void;
  response(id: number): Promise<{ status: string; error?: string }>;
  sock: { destroy(): void };
}
const wire = new URL("../../../kernel/dist/test/wire.js", import.meta.url).href;
const rawPeer = async (path: string): Promise<RawPeer> =>
  ((await import(wire)) as { RawPeer: { connect(p: string): Promise<RawPeer> } }).RawPeer.connect(path);

// audit.suppressed (case 646) names the first targets a session was refused on past the refusal
// rate: text the refused persona chose, which the audit views must not print raw. Only targets
// that passed the intent's grammar (printable ASCII) reach it: a target that fails it is refused
// SEMANTIC with no target column, its bytes in the record's intent, which show decodes and escapes.

/** Targets with what a terminal must never be handed raw: C0 and C1 controls, an OSC title, bidi overrides, a line break. */
const HOSTILE = [
  "obj://d/\u001b]0;owned\u0007",
  "obj://d/\u202etxt\u2066x",
  "obj://d/\u009b2J\u0085y",
  "obj://d/\n  persona      forged",
  // Clipped at 256 characters between the two halves of a surrogate pair: a lone surrogate, no UTF-8 at all.
  `obj://d/${"a".repeat(247)}\u{1f600}`,
];
const UNPRINTABLE =
  /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ufffd]|[\ud800-\udfff]/u;

describe("audit views of an audit.suppressed record", () => {
  it("refused targets with controls, escapes, bidi overrides or broken text never reach its targets, and query, timeline and show print none of them raw", async () => {
    const home = mkdtempSync(join(tmpdir(), "kpip-suppressed-"));
    try {
      const k = new Kernel({ home, logLevel: "silent", sandbox: "none", auditRefusalRate: 1, auditRefusalPersonaRate: 1 });
      await k.start();
      try {
        const admin = await connectAdmin(home);
        const eve = generateIdentity("eve");
        try {
          await admin.personas.register("eve", eve.publicKey);
        } finally {
          await admin.close();
        }
        // Raw requests: the client checks a target's grammar before sending, a hostile peer need not.
        const p = await rawPeer(k.socketPath);
        let id = 0;
        const refused = async (target: string) => {
          p.request(++id, encodeCanonical({ op: "storage.read", target, args: {} }), { persona: "eve", caps: [] });
          const r = await p.response(id);
          assert.equal(r.status, "FAILURE", target);
        };
        try {
          await p.handshake(eve);
          // Rounds of refusals until an aggregate record names a refused target (past the burst
          // nearly all are counted, not recorded one by one; the rate refills meanwhile).
          const suppressed = () => k.inspect.queryAudit({ op: "audit.suppressed", limit: 1000 });
          for (let round = 0; !suppressed().some((r) => r.detail?.includes('"obj://d/plain"')); round++) {
            assert.ok(round < 500, "no aggregate record names a target");
            for (const t of HOSTILE) await refused(t);
            await refused("obj://d/plain");
          }
          const named = suppressed().flatMap((r) => (JSON.parse(r.detail ?? "{}") as { targets?: string[] }).targets ?? []);
          for (const t of named) assert.ok(!UNPRINTABLE.test(t), `an aggregate names ${JSON.stringify(t)}`);
        } finally {
          p.sock.destroy();
        }
      } finally {
        await k.stop();
      }
      const q = kpip(["audit", "query", "--home", home, "--op", "audit.suppressed"]);
      assert.equal(q.code, 0, q.err);
      const seq = Number(/^\s*(\d+) /m.exec(q.out)?.[1]);
      assert.ok(seq > 0, q.out);
      const show = kpip(["audit", "show", String(seq), "--home", home]);
      const timeline = kpip(["audit", "timeline", "--home", home, "--persona", "eve"]);
      for (const r of [show, timeline]) assert.equal(r.code, 0, r.err);
      for (const [view, out] of Object.entries({ query: q.out, show: show.out, timeline: timeline.out })) {
        assert.ok(!UNPRINTABLE.test(out), `${view}: raw control, bidi or broken character in: ${JSON.stringify(out)}`);
        assert.ok(!/^\s*persona\s+forged$/m.test(out), `${view}: a forged line:\n${out}`);
      }
      assert.match(show.out, /"targets":\["obj:\/\/d\/plain"\]/, "show prints the aggregate's targets");
      // The refusals recorded one by one hold the hostile targets in their intent, which show decodes.
      const j = kpip(["audit", "query", "--home", home, "--persona", "eve", "--json"]);
      const seqs = j.out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { seq: number; phase: string; op: string | null })
        .filter((r) => r.phase === "refused" && r.op === null)
        .map((r) => r.seq);
      assert.ok(seqs.length >= HOSTILE.length, j.out);
      let decoded = 0;
      // The burst records the first round's first five refusals one by one: the bidi target's among them.
      for (const seq of seqs) {
        const r = kpip(["audit", "show", String(seq), "--home", home]);
        assert.equal(r.code, 0, r.err);
        assert.ok(!UNPRINTABLE.test(r.out), `show ${seq}: raw control, bidi or broken character in: ${JSON.stringify(r.out)}`);
        assert.ok(!/^\s*persona\s+forged$/m.test(r.out), `show ${seq}: a forged line:\n${r.out}`);
        if (/^intent: the stored intent does not decode: .*\\u\{202e\}txt\\u\{2066\}x/m.test(r.out)) decoded++;
      }
      assert.ok(decoded > 0, "show says why the bidi target's intent does not decode, the override escaped");
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
