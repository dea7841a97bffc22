/**
 * `npm run bench:caps`: cost of the capability checks on the request path —
 * an authorize() through a bound handle (table lookup + live revocation/expiry/subject
 * checks + cached pattern decision), a cold token verification (decode + HMAC chain +
 * grant), a cached one (same bytes seen before: live checks only), and an authorize() with
 * an inline token.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { attenuate, encodeToken } from "@kpip/protocol";
import { CapEnforcer, HandleTable, RootKeys, SqliteStore } from "../src/index.js";

const json = process.argv.includes("--json");
const home = mkdtempSync(join(tmpdir(), "kpip-bench-caps-"));
const store = new SqliteStore(join(home, "kernel.db"));
const enforcer = new CapEnforcer(new RootKeys(home), store);
let token = enforcer.mint(undefined, "bench", {
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
  else console.log(`${name.padEnd(34)} ${ns.toFixed(0).padStart(8)} ns/op`);
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
store.close();
rmSync(home, { recursive: true, force: true });
