import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decodeCanonical, encodeIntent, generateIdentity, type Intent, lastDecodedItems } from "@kpip/protocol";
import { DECODED_ITEMS_PER_SECOND, OWED_INTENT_BYTES, REFUSED_DECODE_WEIGHT, RefusalLimiter } from "../src/audit/refusals.js";
import { addPersonaKey, withKernel } from "./harness.js";
import { RawPeer } from "./wire.js";

describe("intents decoded for refused requests", () => {
  it("a persona with no token sending intents of 50,000 map keys: once its tree's refusals decoded past the allowance its large intents are refused RESOURCE undecoded; small ones and other trees are served as before", async () => {
    await withKernel({}, async (t) => {
      const mallory = generateIdentity("mallory");
      addPersonaKey(t, "mallory", mallory.publicKey);
      const p = await RawPeer.connect(t.k.socketPath);
      await p.handshake(mallory, []);
      // Each decoded whole (~100,000 items, 30–140 ms of the kernel's thread) before the refusal could be known.
      const data: Record<string, number> = {};
      for (let i = 0; i < 49_990; i++) data[`k${i.toString(36)}`] = 0;
      const heavy = { op: "event.emit", target: "topic://x/y", args: { data } };
      const classes: string[] = [];
      for (let id = 1; id <= 4; id++) {
        p.request(id, heavy, { persona: "mallory", caps: [] });
        const r = await p.response(id);
        classes.push(`${r.status}/${r.error}`);
        if (r.error === "RESOURCE")
          assert.match(r.message ?? "", new RegExp(`more than ${DECODED_ITEMS_PER_SECOND} intent items`));
      }
      assert.equal(classes[0], "FAILURE/CAPABILITY", "the first is decoded and refused as before");
      assert.equal(classes.at(-1), "FAILURE/RESOURCE", `then its tree owes the decoding: ${classes.join(", ")}`);
      // A small intent of the same tree is decoded and refused as before.
      p.request(10, { op: "system.health", target: "kernel://", args: {} }, { persona: "mallory", caps: [] });
      assert.equal((await p.response(10)).error, "CAPABILITY");
      // Another tree's large intent is served.
      const admin = await t.admin();
      const big = new Uint8Array(OWED_INTENT_BYTES * 4).fill(120);
      await admin.storage.write("obj://ws/big", big);
      assert.equal((await admin.storage.read("obj://ws/big")).data.length, big.length);
      p.close();
    });
  });

  it("a refused request's decoded items are charged REFUSED_DECODE_WEIGHT times in all: a small intent's at the refusal, a large one's once at its decoding and the rest at the refusal, one refused before step 3 for its record's names", async () => {
    const charged: number[] = [];
    const real = RefusalLimiter.prototype.decodedItems;
    RefusalLimiter.prototype.decodedItems = function (this: RefusalLimiter, persona: string, items: number) {
      if (persona === "mallory") charged.push(items);
      real.call(this, persona, items);
    };
    const itemsOf = (i: Intent) => {
      decodeCanonical(encodeIntent(i));
      return lastDecodedItems();
    };
    try {
      await withKernel({}, async (t) => {
        const mallory = generateIdentity("mallory");
        addPersonaKey(t, "mallory", mallory.publicKey);
        const p = await RawPeer.connect(t.k.socketPath);
        await p.handshake(mallory, []);
        const small: Intent = { op: "system.health", target: "kernel://", args: {} };
        const data: Record<string, number> = {};
        for (let i = 0; i < 600; i++) data[`key${i}`] = 0;
        const large: Intent = { op: "event.emit", target: "topic://x/y", args: { data } };
        assert.ok(encodeIntent(large).length >= OWED_INTENT_BYTES);
        const [s, l] = [itemsOf(small), itemsOf(large)];
        const W = REFUSED_DECODE_WEIGHT;

        p.request(1, small, { persona: "mallory", caps: [] });
        assert.equal((await p.response(1)).error, "CAPABILITY");
        assert.deepEqual(charged.splice(0), [s * W], "a small intent: all of it at the refusal");

        p.request(2, large, { persona: "mallory", caps: [] });
        assert.equal((await p.response(2)).error, "CAPABILITY");
        assert.deepEqual(charged.splice(0), [l, l * (W - 1)], "a large intent: once as decoded, the rest at the refusal");

        // Refused before step 3 (it claims another persona): decoded only for its record's op and target.
        p.request(3, small, { persona: "someone-else", caps: [] });
        assert.equal((await p.response(3)).error, "AUTH");
        assert.deepEqual(charged.splice(0), [s * W], "decoded for the record: all of it");
        p.close();
      });
    } finally {
      RefusalLimiter.prototype.decodedItems = real;
    }
  });
});
