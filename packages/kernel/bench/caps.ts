/**
 * `npm run bench:caps`: cost of the capability checks on the request path —
 * an authorize() through a bound handle (table lookup + live revocation/expiry/subject
 * checks + cached pattern decision), a cold token verification (decode + HMAC chain +
 * grant), a cached one (same bytes seen before: live checks only), and an authorize() with
 * an inline token. Then the worst case per request the bounds allow: tokens of
 * `maxTokenBytes` (8 KiB) built to be expensive (star-heavy patterns in every caveat), as many
 * bound as a session may (16 × maxTokenBytes of tokens), all named by a request whose target
 * changes every time so no cached decision applies, plus the 4 inline tokens a request may
 * carry, never seen before; and the escalation check of the largest mint that fits.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { attenuate, compiledAllows, compileGrant, encodeToken, grantAllows, type Token } from "@kpip/protocol";
import { capabilities, HandleTable, RootKeys, SqliteStore } from "../src/index.js";

const json = process.argv.includes("--json");
const home = mkdtempSync(join(tmpdir(), "kpip-bench-caps-"));
const store = new SqliteStore(join(home, "kernel.db"));
const { enforcer, tokens } = capabilities(new RootKeys(home), store);
let token = tokens.mint(undefined, "bench", {
  sub: "alice",
  rights: [
    { ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] },
    { ops: ["event.*"], targets: ["topic://ws1/**"] },
  ],
  ttlMs: 3_600_000,
});
token = attenuate(token, { t: "ops", v: ["storage.*"] });
token = attenuate(token, { t: "exp", v: Date.now() + 1_800_000 });
const bytes = encodeToken(token);
const handles = new HandleTable();
const bound = enforcer.bind(handles, "alice", bytes);
if (!("handle" in bound)) throw new Error(`bind failed: ${bound.message}`);
const req = {
  persona: "alice",
  session: "s",
  intent: { op: "storage.write", target: "obj://ws1/notes/today.txt", args: {} },
  context: { persona: "alice", workspace: "ws1" },
  caps: [bound.handle],
  handles,
  declaration: undefined,
};

function measure(name: string, fn: () => unknown, iterations: number): void {
  for (let i = 0; i < iterations / 10; i++) fn();
  const runs: number[] = [];
  for (let r = 0; r < 5; r++) {
    const t = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) fn();
    runs.push(Number(process.hrtime.bigint() - t) / iterations);
  }
  runs.sort((a, b) => a - b);
  const ns = runs[2] as number;
  if (json) console.log(JSON.stringify({ name, unit: "ns/op", value: Math.round(ns) }));
  else console.log(`${name.padEnd(50)} ${ns.toFixed(0).padStart(9)} ns/op`);
}

measure("caps.handle_authorize", () => enforcer.authorize(req), 500_000);
measure(
  "caps.token_verify_cold",
  () => {
    enforcer.forgetVerified();
    return enforcer.verify(bytes, "alice");
  },
  20_000,
);
measure("caps.token_verify_cached", () => enforcer.verify(bytes, "alice"), 200_000);
measure("caps.inline_authorize", () => enforcer.authorize({ ...req, caps: [bytes] }), 50_000);

// ---- the worst case the bounds allow ---------------------------------------------------------
const MAX_TOKEN_BYTES = 8192;
/** Patterns for one list: star-heavy (every depth-5 mix of `a` and `*`) or long literals (the attack). */
const patterns = (shape: "stars" | "literal", i: number) =>
  shape === "stars"
    ? Array.from({ length: 8 }, (_, k) => {
        const m = (k + i) % 32;
        return `obj://${[0, 1, 2, 3, 4].map((b) => ((m >> b) & 1 ? "*" : "a")).join("/")}/**`;
      })
    : Array.from({ length: 8 }, (_, k) => `obj://a/a/a/a/a/${"p".repeat(24)}${i}-${k}`);
/**
 * A token of at most maxTokenBytes whose check does all the work it can: every right and every
 * filter is walked, and only its last caveat (a target no request uses) refuses.
 */
function worstToken(shape: "stars" | "literal", seed: number): Token {
  let t = tokens.mint(undefined, "bench", {
    sub: "alice",
    rights: [
      ...Array.from({ length: 7 }, (_, i) => ({ ops: ["event.*"], targets: patterns(shape, i + seed) })),
      { ops: ["storage.*"], targets: ["obj://a/**"] },
    ],
    ttlMs: 3_600_000,
  });
  const last = { t: "targets" as const, v: ["obj://never"] };
  for (let i = 0; t.caveats.length < 63; i++) {
    const next = attenuate(t, { t: "targets", v: [...patterns(shape, i), "obj://a/**"] });
    if (encodeToken(attenuate(next, last)).length > MAX_TOKEN_BYTES) break;
    t = next;
  }
  return attenuate(t, last);
}
let n = 0;
for (const shape of ["stars", "literal"] as const) {
  const worst = Array.from({ length: 20 }, (_, i) => worstToken(shape, i * 3));
  const worstBytes = worst.map(encodeToken);
  const wh = new HandleTable();
  for (const b of worstBytes) if (!("handle" in enforcer.bind(wh, "alice", b))) break;
  if (!json)
    console.log(
      `${shape} token: ${worstBytes[0]?.length} bytes, ${worst[0]?.caveats.length} caveats; ${wh.size} bound on one session (16 × maxTokenBytes)`,
    );
  // Every bound handle is tried and refuses at its last filter; the target is new each time.
  const worstReq = () => ({
    ...req,
    intent: { op: "storage.write", target: `obj://a/a/a/a/a/${n++}`, args: {} },
    context: { persona: "alice" },
    caps: wh.all().map((h) => h.handle) as (number | Uint8Array)[],
    handles: wh,
  });
  if (enforcer.authorize(worstReq()).allowed) throw new Error("the worst request must be refused");
  measure(`caps.worst_${shape}_request_bound_tokens`, () => enforcer.authorize(worstReq()), 200);
  // Plus the most a request may carry inline (4), none seen before: four full verifications.
  measure(
    `caps.worst_${shape}_request_bound_and_4_inline_cold`,
    () => {
      enforcer.forgetVerified();
      const r = worstReq();
      return enforcer.authorize({ ...r, caps: [...r.caps, ...worstBytes.slice(16, 20)] });
    },
    50,
  );
  const g = wh.all()[0]?.grant;
  if (!g) throw new Error("no handle");
  measure(`caps.worst_${shape}_one_token_uncompiled`, () => grantAllows(g, "storage.write", `obj://a/a/a/a/a/${n++}`), 2000);
  measure(
    `caps.worst_${shape}_one_token_compiled`,
    () => compiledAllows(compileGrant(g), "storage.write", `obj://a/a/a/a/a/${n++}`),
    2000,
  );
  measure(
    `caps.worst_${shape}_token_verify_cold`,
    () => {
      enforcer.forgetVerified();
      return enforcer.verify(worstBytes[1] as Uint8Array, "alice");
    },
    200,
  );
}
const wh = new HandleTable();
enforcer.bind(wh, "alice", encodeToken(worstToken("literal", 0)));
const g0 = wh.all()[0]?.grant;
if (!g0) throw new Error("no handle");
// The largest mint that fits: 64 distinct op patterns × as many targets as fit in maxTokenBytes,
// checked for escalation against a worst parent grant.
const targets: string[] = [];
const ops = Array.from({ length: 64 }, (_, i) => `storage.op${i}`);
while (JSON.stringify(ops).length + JSON.stringify(targets).length < MAX_TOKEN_BYTES - 600 && targets.length < 64)
  targets.push(`obj://a/a/a/a/a/t${targets.length}`);
const mintRights = [{ ops, targets }];
measure(
  "caps.worst_mint_escalation_check",
  () => {
    try {
      tokens.mint(g0, "bench", { sub: "alice", rights: mintRights, ttlMs: 60_000 });
    } catch {
      // refused as an escalation: the check ran to its end
    }
  },
  200,
);
store.close();
rmSync(home, { recursive: true, force: true });
