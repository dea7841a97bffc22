import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import net from "node:net";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { KernelClient } from "@kpip/client";
import { pino } from "pino";
import { adminIdentity, until, withKernel } from "./harness.js";

const tls = (f: string) => fileURLToPath(new URL(`../../test/fixtures/tls/${f}`, import.meta.url));
const TLS = { grpcTlsCert: tls("server.pem"), grpcTlsKey: tls("server.key") };

describe("gRPC connections without a stream are not held for ever", () => {
  it("HTTP/2 connections that open no stream, and TCP connections that never finish TLS, are closed after handshakeTimeoutMs; a session's connection stays while its stream is open", async () => {
    const lines: { msg: string }[] = [];
    const logger = pino({ level: "info" }, { write: (l: string) => lines.push(JSON.parse(l)) });
    await withKernel({ grpcListen: "127.0.0.1:0", ...TLS, handshakeTimeoutMs: 1000, logger }, async (t) => {
      const address = t.k.grpcAddress as string;
      const ca = readFileSync(tls("ca.pem"));
      // A session opened first, idle (no request) while the bare connections time out.
      const c = await KernelClient.connect({
        grpc: { address, ca },
        identity: adminIdentity(t.k),
        tokens: [t.adminToken],
        reconnect: false,
      });
      const conns: http2.ClientHttp2Session[] = [];
      let closed = 0;
      for (let i = 0; i < 20; i++) {
        // TLS completes, HTTP/2 is set up, and then nothing: no stream, ever.
        const h = http2.connect(`https://${address}`, { ca, checkServerIdentity: () => undefined });
        h.on("error", () => {});
        h.on("close", () => closed++);
        await new Promise((r) => h.once("connect", r));
        conns.push(h);
      }
      // And connections that never finish TLS: nothing sent, or a few bytes of a handshake.
      const raws: net.Socket[] = [];
      let rawClosed = 0;
      for (let i = 0; i < 10; i++) {
        const [host, port] = [address.slice(0, address.lastIndexOf(":")), Number(address.slice(address.lastIndexOf(":") + 1))];
        const r = net.connect({ host, port });
        r.on("error", () => {});
        r.on("close", () => rawClosed++);
        await new Promise((ok) => r.once("connect", ok));
        if (i % 2) r.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00])); // a TLS record header, then nothing
        raws.push(r);
      }
      try {
        await until(() => closed === 20, 30_000, "the kernel to close the 20 connections without a stream");
        await until(() => rawClosed === 10, 30_000, "the kernel to close the 10 connections that never finished TLS");
        // The session's stream kept its connection: it still answers, on the same session.
        assert.equal((await c.system.health()).status, "ok");
        assert.equal(t.k.sessionCount, 1);
        // The TLS timers found each finished handshake's socket (none gave up, none cut a session).
        assert.deepEqual(
          lines.filter((l) => l.msg === "gRPC listener"),
          [],
        );
      } finally {
        for (const h of conns) h.destroy();
        for (const r of raws) r.destroy();
        await c.close();
      }
    });
  });
});
