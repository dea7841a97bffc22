import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { type HttpGateway, serveHttp } from "../src/http.js";
import { gatewayOn, HOST, KernelHome } from "./harness.js";

const BEARER = "a-secret-of-enough-length";
const RIGHTS = [
  { ops: ["system.describe"], targets: ["kernel://"] },
  { ops: ["storage.read", "storage.write", "storage.list"], targets: ["obj://ws1/**"] },
];
const INIT = JSON.stringify({
  jsonrpc: "2.0",
  id: 1,
  method: "initialize",
  params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "hostile", version: "1" } },
});

async function connect(http: HttpGateway): Promise<Client> {
  const c = new Client(HOST);
  await c.connect(
    new StreamableHTTPClientTransport(new URL(http.url), { requestInit: { headers: { Authorization: `Bearer ${BEARER}` } } }),
  );
  return c;
}

describe("the HTTP gateway under a hostile host holding the secret", () => {
  const k = new KernelHome();
  let gw: Awaited<ReturnType<typeof gatewayOn>>;
  before(async () => {
    await k.start();
    gw = await gatewayOn(k, await k.persona("hank", RIGHTS));
  });
  after(async () => {
    await gw?.close();
    await k.dispose();
  });

  it("keeps nothing of an initialize refused for its Accept or Content-Type, and does not count it", async () => {
    const http = await serveHttp(gw.gateway, { host: "127.0.0.1", port: 0, bearer: BEARER, maxSessions: 2 });
    try {
      const codes: Record<number, number> = {};
      for (let i = 0; i < 200; i++) {
        const r = await fetch(http.url, {
          method: "POST",
          body: INIT,
          headers: {
            authorization: `Bearer ${BEARER}`,
            "content-type": i % 2 ? "text/plain" : "application/json",
            accept: i % 2 ? "application/json, text/event-stream" : "application/json",
          },
        });
        codes[r.status] = (codes[r.status] ?? 0) + 1;
        await r.arrayBuffer();
      }
      assert.deepEqual(codes, { 406: 100, 415: 100 });
      assert.equal(gw.gateway.serverCount, 0);
      assert.equal(http.sessions(), 0);
      // Joined duplicate headers: the gateway's check passes it, the SDK refuses it after the
      // server exists; that server is closed too.
      const dup = await fetch(http.url, {
        method: "POST",
        body: INIT,
        headers: {
          authorization: `Bearer ${BEARER}`,
          "content-type": "application/json;charset=utf-8, text/plain",
          accept: "application/json, text/event-stream",
        },
      });
      await dup.arrayBuffer();
      assert.equal(dup.status, 415);
      assert.equal(gw.gateway.serverCount, 0);
      assert.equal(http.sessions(), 0);
      // Honest hosts still get both slots.
      const a = await connect(http);
      const b = await connect(http);
      assert.equal(gw.gateway.serverCount, 2);
      assert.ok((await a.listTools()).tools.length > 0);
      await a.close();
      await b.close();
    } finally {
      await http.close();
    }
  });
});
