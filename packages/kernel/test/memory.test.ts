import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { KernelClient, KpipError } from "@kpip/client";
import { adminIdentity, removeHome, startKernel } from "./harness.js";

describe("in-memory transport", () => {
  it("carries a full session through the same pipeline: handshake, capabilities, audit, events", async () => {
    const t = await startKernel();
    const c = await KernelClient.connect({
      connector: t.k.inMemoryConnector(),
      identity: adminIdentity(t.k),
      tokens: [t.adminToken],
    });
    assert.equal(c.transport, "memory");
    await c.storage.write("obj://ws1/m", "in memory");
    assert.equal(Buffer.from((await c.storage.read("obj://ws1/m")).data).toString(), "in memory");
    const sub = await c.events.subscribe("topic://m/*");
    await c.events.emit("topic://m/x", { n: 1 });
    for await (const e of sub) {
      assert.deepEqual(e.data, { n: 1 });
      break;
    }
    const bare = await KernelClient.connect({ connector: t.k.inMemoryConnector(), identity: adminIdentity(t.k) });
    await assert.rejects(bare.system.health(), (e: unknown) => e instanceof KpipError && e.errorClass === "CAPABILITY");
    await bare.close();
    await c.close();
    assert.ok(t.k.inspect.queryAudit({ op: "storage.write" }).length >= 2);
    await t.stop();
    removeHome(t.home);
  });
});
