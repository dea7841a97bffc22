import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import * as protocol from "@kpip/protocol";
import { BUILTIN_FAMILIES, type OpDefinition } from "@kpip/protocol";

/*
 * An op that leaves state on the caller's session (a subscription, a watch, a bound token)
 * declares it in the catalogue (`sessionState`): the MCP gateway, which carries many hosts over
 * one session, offers no such op as a tool. Nothing but this declaration keeps a new one out,
 * so the handlers are read here: one that reaches its session (the session's event sink or
 * handle table, or the session id at all) belongs to an op that declares it, or is named below
 * with the reason it holds nothing there.
 */

const PRIMITIVES = fileURLToPath(new URL("../../src/primitives/", import.meta.url));

/** Ops whose handler names the session without leaving state on it. */
const SESSION_ID_ONLY: Record<string, string> = {
  "compute.submit": "the session id is kept with the op for its kernel records; the op is the persona's, not the session's",
};

/** Each `implement(<definition>, { … })` in the primitives, with the text of its implementation. */
function implementations(): { def: OpDefinition; file: string; body: string }[] {
  const out: { def: OpDefinition; file: string; body: string }[] = [];
  for (const file of readdirSync(PRIMITIVES).filter((f) => f.endsWith(".ts"))) {
    const src = readFileSync(PRIMITIVES + file, "utf8");
    const parts = src.split(/\bimplement\((\w+),/);
    for (let i = 1; i < parts.length; i += 2) {
      const name = parts[i] as string;
      const def = (protocol as Record<string, unknown>)[name] as OpDefinition | undefined;
      assert.ok(def && typeof def.op === "string", `${file}: implement(${name}) names an op definition of @kpip/protocol`);
      out.push({ def, file, body: parts[i + 1] as string });
    }
  }
  return out;
}

describe("ops that hold session state", () => {
  it("every op whose handler reaches its session declares sessionState, and every op declaring it does", () => {
    const impls = implementations();
    const reaches = new Set<string>();
    for (const { def, file, body } of impls) {
      const holds = /\bsink(Of)?\(\s*ctx\.session\b|\bctx\.handles\b/.test(body);
      const names = /\bctx\.session\b/.test(body);
      if (holds) reaches.add(def.op);
      if (holds) assert.ok(def.sessionState, `${def.op} (${file}) reaches its session's sink or handles: declare sessionState`);
      else if (names)
        assert.ok(
          def.sessionState || SESSION_ID_ONLY[def.op],
          `${def.op} (${file}) names ctx.session: declare sessionState, or say in this test why it holds nothing there`,
        );
    }
    const declared = BUILTIN_FAMILIES.flatMap((f) => f.ops.filter((d) => d.sessionState).map((d) => d.op)).sort();
    assert.deepEqual(declared, [...reaches].sort(), "an op declaring sessionState reaches its session");
    // The ones known today, so that a scan that matched nothing cannot pass.
    assert.deepEqual(declared, ["event.subscribe", "event.unsubscribe", "storage.unwatch", "storage.watch", "token.bind"]);
    // Every built-in op was found in a handler (the scan read the right files).
    const implemented = new Set(impls.map((x) => x.def.op));
    for (const f of BUILTIN_FAMILIES) for (const d of f.ops) assert.ok(implemented.has(d.op), `${d.op} is implemented`);
  });
});
