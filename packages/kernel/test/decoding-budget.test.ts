import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { encodeIntent, generateIdentity } from "@kpip/protocol";
import { DECODED_ITEMS_PER_SECOND, OWED_INTENT_BYTES } from "../src/audit/refusals.js";
import { addPersonaKey, withKernel } from "./harness.js";
import { RawPeer } from "./wire.js";

describe("intents decoded for allowed requests", () => {
  it("a persona allowed event.emit sending events of 50,000 map keys: once its tree decoded past its budget its large intents are refused RESOURCE undecoded; its small ones and other trees are served", async () => {
    await withKernel({}, async (t) => {
      const mallory = generateIdentity("mallory");
      addPersonaKey(t, "mallory", mallory.publicKey);
      const admin = await t.admin();
      const m = await admin.tokens.mint("mallory", {
        rights: [{ ops: ["event.emit", "storage.write"], targets: ["topic://m/**", "obj://m/**"] }],
        ttlMs: 600_000,
      });
      const p = await RawPeer.connect(t.k.socketPath);
      await p.handshake(mallory, [m.token]);
      // ~100,000 items, 30–140 ms of the kernel's thread each: an event's payload, allowed.
      const data: Record<string, number> = {};
      for (let i = 0; i < 49_990; i++) data[`k${i.toString(36)}`] = 0;
      const heavy = encodeIntent({ op: "event.emit", target: "topic://m/a", args: { data } });
      const classes: string[] = [];
      // The budget's burst is 5 such intents; each takes far less than the second it would take to refill.
      for (let id = 1; id <= 30 && classes.at(-1) !== "FAILURE/RESOURCE"; id++) {
        p.request(id, heavy, { persona: "mallory", caps: [1] });
        const r = await p.response(id);
        classes.push(`${r.status}/${r.error}`);
        if (r.error === "RESOURCE") {
          assert.match(r.message ?? "", new RegExp(`more than ${DECODED_ITEMS_PER_SECOND} intent items`));
        }
      }
      assert.equal(classes[0], "SUCCESS/undefined", "allowed: decoded and served");
      assert.equal(classes.at(-1), "FAILURE/RESOURCE", `then its tree's budget is spent: ${classes.join(", ")}`);
      // Refused undecoded: its record has the intent's hash, not its op and target (reading them is a whole decode).
      const owed = t.k.inspect.queryAudit({ limit: 1000 }).filter((r) => r.persona === "mallory" && r.errorClass === "RESOURCE");
      assert.ok(owed.length >= 1);
      for (const r of owed) assert.deepEqual([r.op, r.target, r.intentHash?.length], [null, null, 32]);
      // A small intent of the same tree is served.
      p.request(100, { op: "storage.write", target: "obj://m/small", args: { data: "y" } }, { persona: "mallory", caps: [1] });
      assert.equal((await p.response(100)).status, "SUCCESS");
      // Another tree's large intent is decoded and served.
      const a = await RawPeer.admin(t);
      a.request(1, encodeIntent({ op: "event.emit", target: "topic://ws/a", args: { data } }), {
        persona: "admin",
        caps: [1],
      });
      assert.equal((await a.response(1)).status, "SUCCESS");
      assert.ok(heavy.length >= OWED_INTENT_BYTES);
      p.close();
      a.close();
    });
  });
});
