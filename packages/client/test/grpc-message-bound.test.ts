import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import http2 from "node:http2";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { gzipSync } from "node:zlib";
import { GRPC_MAX_MESSAGE_BYTES } from "@kpip/protocol";
import { GrpcConnector } from "../src/index.js";

const RESOURCE_EXHAUSTED = 8;
const dir = mkdtempSync(join(tmpdir(), "kpip-grpc-bound-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/**
 * A peer posing as a kernel's gRPC listener (plain HTTP/2 on a Unix socket, so every byte of its
 * answer is its own choice): whatever the client sends, it answers with `body` as one gRPC
 * message, compressed with gzip when `gzip` is set, and ends the call.
 */
async function posingKernel(name: string, body: Buffer, gzip: boolean): Promise<{ address: string; close: () => void }> {
  const server = http2.createServer();
  server.on("stream", (stream) => {
    const headers = { ":status": 200, "content-type": "application/grpc", ...(gzip ? { "grpc-encoding": "gzip" } : {}) };
    stream.respond(headers, { waitForTrailers: true });
    stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
    const payload = gzip ? gzipSync(body) : body;
    const prefix = Buffer.alloc(5);
    prefix[0] = gzip ? 1 : 0;
    prefix.writeUInt32BE(payload.length, 1);
    stream.end(Buffer.concat([prefix, payload]));
    stream.on("error", () => {});
  });
  const path = join(dir, `${name}.sock`);
  await new Promise<void>((r) => server.listen(path, r));
  return {
    address: `unix:${path}`,
    close: () => server.close(),
  };
}

/** One stream through the client's gRPC connector: what it delivered, and the error it closed with. */
async function receive(address: string): Promise<{ delivered: number; error?: Error & { code?: number } }> {
  const connector = new GrpcConnector({ address, insecure: true });
  try {
    const channel = await connector.connect(Date.now() + 60_000);
    let delivered = 0;
    channel.onData((chunk) => {
      delivered += chunk.length;
    });
    const error = await new Promise<(Error & { code?: number }) | undefined>((resolve) => {
      channel.onClose(resolve);
      channel.write(new Uint8Array(16));
    });
    return { delivered, ...(error ? { error } : {}) };
  } finally {
    connector.close();
  }
}

describe("gRPC messages a peer posing as the kernel sends", () => {
  it("a message over the protocol's 1 MiB is refused by the client's gRPC layer before it is handed over (PROTOCOL §3.6)", async (t) => {
    const k = await posingKernel("large", Buffer.alloc(8 * 1024 * 1024, 0x4b), false);
    t.after(k.close);
    const got = await receive(k.address);
    assert.equal(got.delivered, 0, "none of the message reached the client");
    assert.equal(got.error?.code, RESOURCE_EXHAUSTED, `closed with ${got.error?.message}`);
  });

  it("a compressed message that inflates past 1 MiB (a few KiB of gzip for 64 MiB) is refused, not inflated whole", async (t) => {
    const bomb = Buffer.alloc(64 * 1024 * 1024);
    const k = await posingKernel("bomb", bomb, true);
    t.after(k.close);
    assert.ok(gzipSync(bomb).length < 256 * 1024, "the bomb travels small");
    const got = await receive(k.address);
    assert.equal(got.delivered, 0, "none of the message reached the client");
    assert.equal(got.error?.code, RESOURCE_EXHAUSTED, `closed with ${got.error?.message}`);
  });

  it("a message of exactly 1 MiB is handed over whole", async (t) => {
    const k = await posingKernel("exact", Buffer.alloc(GRPC_MAX_MESSAGE_BYTES, 0x4b), false);
    t.after(k.close);
    const got = await receive(k.address);
    assert.equal(got.delivered, GRPC_MAX_MESSAGE_BYTES);
  });

  it("a maxMessageBytes that is not a positive whole number is refused when the connector is made, never taken as no bound", () => {
    // -1 is grpc-js's "unlimited" (the 1 MiB bound undone); 0 and below made the send's split loop for ever.
    for (const maxMessageBytes of [-1, 0, 0.5, Number.NaN, Number.POSITIVE_INFINITY])
      assert.throws(
        () => new GrpcConnector({ address: "unix:/nowhere.sock", insecure: true, maxMessageBytes }),
        RangeError,
        String(maxMessageBytes),
      );
    assert.ok(new GrpcConnector({ address: "unix:/nowhere.sock", insecure: true, maxMessageBytes: 4096 }));
  });
});
