import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { UdsConnector } from "../src/connectors/uds.js";
import { KernelUnavailableError } from "../src/index.js";

/** A socket that fails like a connect() that got `code`. */
const failing = (code: string) => {
  const s = new net.Socket();
  process.nextTick(() => s.emit("error", Object.assign(new Error(`connect ${code}`), { code })));
  return s;
};

describe("UdsConnector: a full listen queue is waited out, a missing kernel is not", () => {
  const dir = mkdtempSync(join(tmpdir(), "kpip-uds-"));
  const path = join(dir, "k.sock");
  const server = net.createServer((s) => s.end());
  before(() => new Promise<void>((r) => server.listen(path, r)));
  after(() => {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("retries EAGAIN (the kernel's accept queue is full) and connects once it drains", async () => {
    let dials = 0;
    const c = new UdsConnector(path, (p) => (++dials <= 3 ? failing("EAGAIN") : net.connect(p)));
    const ch = await c.connect();
    assert.equal(dials, 4);
    ch.destroy();
  });

  it("fails at once when there is no kernel (ENOENT, ECONNREFUSED)", async () => {
    for (const code of ["ENOENT", "ECONNREFUSED"]) {
      let dials = 0;
      const c = new UdsConnector(path, () => {
        dials++;
        return failing(code);
      });
      await assert.rejects(c.connect(), (e: unknown) => e instanceof KernelUnavailableError && e.message.includes(code));
      assert.equal(dials, 1, code);
    }
  });

  it("gives up on a queue that stays full, by the caller's deadline, saying so", async () => {
    let dials = 0;
    const c = new UdsConnector(path, () => {
      dials++;
      return failing("EAGAIN");
    });
    const full = (e: unknown) => e instanceof KernelUnavailableError && /listen queue stayed full/.test(e.message);
    await assert.rejects(c.connect(Date.now() + 300), full);
    assert.ok(dials > 1, "it retried within the deadline");
    // The caller's deadline, not the connector's own 5 s: one already past allows no second dial.
    dials = 0;
    await assert.rejects(c.connect(Date.now() - 1), full);
    assert.equal(dials, 1);
  });
});
