import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { generateIdentity } from "@kpip/protocol";
import { DECODED_ITEMS_PER_SECOND, OWED_INTENT_BYTES } from "../src/audit/refusals.js";
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
});
