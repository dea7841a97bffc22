import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { KernelClient, KernelUnavailableError } from "@kpip/client";
import { decodeMessage, encodeMessage, FrameDecoder, type Message } from "@kpip/protocol";
import { ConfigError, Kernel } from "../src/index.js";
import { adminIdentity, removeHome, startKernel, type TestKernel, until } from "./harness.js";

const tls = (f: string) => fileURLToPath(new URL(`../../test/fixtures/tls/${f}`, import.meta.url));
const pem = (f: string) => readFileSync(tls(f));
const TLS = { grpcTlsCert: tls("server.pem"), grpcTlsKey: tls("server.key") };

/** A raw gRPC stream to the kernel: sends any bytes, collects the frames that come back. */
function rawStream(address: string, creds = grpc.credentials.createSsl(pem("ca.pem"))) {
  const client = new grpc.Client(address, creds, { "grpc.max_send_message_length": 200 * 1024 * 1024 });
  const call = client.makeBidiStreamRequest(
    "/kpip.v1.Kernel/Session",
    (b: Buffer) => b,
    (b: Buffer) => b,
  );
  const frames: Message[] = [];
  const decoder = new FrameDecoder(64 * 1024 * 1024);
  const state = { ended: false, error: undefined as grpc.ServiceError | undefined };
  call.on("data", (d: Buffer) => {
    for (const f of decoder.push(d)) frames.push(decodeMessage(f));
  });
  call.on("error", (e: grpc.ServiceError) => {
    state.error = e;
    state.ended = true;
  });
  call.on("end", () => {
    state.ended = true;
  });
  return { call, frames, state, close: () => client.close() };
}

describe("gRPC transport with TLS", () => {
  let t: TestKernel;
  let address: string;
  before(async () => {
    t = await startKernel({ grpcListen: "127.0.0.1:0", ...TLS, maxBodyBytes: 1024 * 1024, maxObjectBytes: 900 * 1024 });
    address = t.k.grpcAddress as string;
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  const overGrpc = (extra: Record<string, unknown> = {}) =>
    KernelClient.connect({
      grpc: { address, ca: pem("ca.pem"), ...extra },
      identity: adminIdentity(t.k),
      tokens: [t.adminToken],
      reconnect: false,
    });

  it("carries a session: handshake, attestation, storage, the same audit trail", async () => {
    const c = await overGrpc();
    assert.equal(c.transport, "grpc");
    assert.equal((await c.system.health()).status, "ok");
    await c.storage.write("obj://g/a", "over grpc");
    assert.equal(Buffer.from((await c.storage.read("obj://g/a")).data).toString(), "over grpc");
    const open = t.k.database.queryAudit({ op: "session.open", limit: 50 });
    assert.ok(open.some((r) => r.message === "grpc"));
    const status = (await c.call("system.status", "kernel://")).payload as { transports: { kind: string }[] };
    assert.deepEqual(
      status.transports.map((x) => x.kind),
      ["uds", "grpc"],
    );
    await c.close();
  });

  it("refuses a client that does not trust the kernel's certificate", async () => {
    await assert.rejects(overGrpc({ ca: pem("other-ca.pem"), connectTimeoutMs: 1500 }), KernelUnavailableError);
  });

  it("falls back from a missing Unix socket to gRPC, and prefers the socket when it is there", async () => {
    const fb = await KernelClient.connect({
      socket: join(t.home, "no-such.sock"),
      grpc: { address, ca: pem("ca.pem") },
      identity: adminIdentity(t.k),
      tokens: [t.adminToken],
      reconnect: false,
    });
    assert.equal(fb.transport, "grpc");
    assert.equal((await fb.system.health()).status, "ok");
    const seen: string[] = [];
    fb.on("state", (state: string, transport: string) => seen.push(`${state}/${transport}`));
    await fb.close();
    assert.deepEqual(seen, ["closing/grpc", "closed/grpc"], "state events carry the transport in use");
    const uds = await KernelClient.connect({
      socket: t.k.socketPath,
      grpc: { address, ca: pem("ca.pem") },
      identity: adminIdentity(t.k),
      tokens: [t.adminToken],
      reconnect: false,
    });
    assert.equal(uds.transport, "uds");
    await uds.close();
  });

  it("garbage on a stream: fatal PROTOCOL/BAD_MAGIC, stream closed, others served", async () => {
    const s = rawStream(address);
    s.call.write(Buffer.from("GET / HTTP/1.1\r\n\r\n"));
    await until(() => s.frames.find((m) => m.type === "ERROR"), 3000, "ERROR frame");
    const e = s.frames.find((m) => m.type === "ERROR") as Extract<Message, { type: "ERROR" }>;
    assert.deepEqual([e.body.class, e.body.code], ["PROTOCOL", "BAD_MAGIC"]);
    await until(() => s.state.ended, 3000, "stream closed");
    s.close();
    const c = await overGrpc();
    assert.equal((await c.system.health()).status, "ok");
    await c.close();
  });

  it("a message over the size limit is refused by gRPC itself; the kernel keeps serving", async () => {
    const s = rawStream(address);
    s.call.write(Buffer.alloc(3 * 1024 * 1024));
    await until(() => s.state.ended, 5000, "stream refused");
    assert.equal(s.state.error?.code, grpc.status.RESOURCE_EXHAUSTED);
    s.close();
    const c = await overGrpc();
    assert.equal((await c.system.health()).status, "ok");
    await c.close();
  });

  it("a frame declaring more than the negotiated body: PROTOCOL/TOO_LARGE, as over the socket", async () => {
    const s = rawStream(address);
    const hello = encodeMessage({
      type: "HELLO",
      body: { versions: [1], persona: "admin", publicKey: new Uint8Array(32), instance: new Uint8Array(16), features: [] },
    });
    hello.writeUInt32BE(2 * 1024 * 1024, 12);
    s.call.write(hello.subarray(0, 16));
    await until(() => s.frames.find((m) => m.type === "ERROR"), 3000, "ERROR frame");
    const e = s.frames.find((m) => m.type === "ERROR") as Extract<Message, { type: "ERROR" }>;
    assert.deepEqual([e.body.class, e.body.code], ["PROTOCOL", "TOO_LARGE"]);
    s.close();
  });

  it("stopping the kernel drains and ends gRPC sessions; the client sees the close", async () => {
    const t2 = await startKernel({ grpcListen: "127.0.0.1:0", ...TLS });
    const c = await KernelClient.connect({
      grpc: { address: t2.k.grpcAddress as string, ca: pem("ca.pem") },
      identity: adminIdentity(t2.k),
      tokens: [t2.adminToken],
      reconnect: false,
    });
    assert.equal((await c.system.health()).status, "ok");
    await t2.stop();
    await until(() => c.state === "closed", 5000, "client closed");
    await assert.rejects(c.system.health(), KernelUnavailableError);
    removeHome(t2.home);
  });
});

describe("gRPC transport with mTLS", () => {
  let t: TestKernel;
  before(async () => {
    t = await startKernel({ grpcListen: "127.0.0.1:0", ...TLS, grpcTlsClientCa: tls("ca.pem") });
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });
  const connect = (extra: Record<string, unknown>) =>
    KernelClient.connect({
      grpc: { address: t.k.grpcAddress as string, ca: pem("ca.pem"), connectTimeoutMs: 1500, ...extra },
      identity: adminIdentity(t.k),
      tokens: [t.adminToken],
      reconnect: false,
    });

  it("requires a client certificate from the configured CA; the persona still attests", async () => {
    await assert.rejects(connect({}), KernelUnavailableError);
    await assert.rejects(connect({ cert: pem("other-client.pem"), key: pem("other-client.key") }), KernelUnavailableError);
    const c = await connect({ cert: pem("client.pem"), key: pem("client.key") });
    assert.equal((await c.system.health()).status, "ok");
    await c.close();
  });
});

describe("gRPC configuration", () => {
  it("plaintext on loopback works, with a warning in the log", async () => {
    const t = await startKernel({ grpcListen: "127.0.0.1:0" });
    const c = await KernelClient.connect({
      grpc: { address: t.k.grpcAddress as string, insecure: true },
      identity: adminIdentity(t.k),
      tokens: [t.adminToken],
      reconnect: false,
    });
    assert.equal((await c.system.health()).status, "ok");
    await c.close();
    await t.stop();
    removeHome(t.home);
  });

  it("refuses plaintext off loopback, bad addresses, unreadable or half TLS settings (ConfigError, never starts)", async () => {
    const bad: Record<string, string>[] = [
      { grpcListen: "0.0.0.0:0" },
      { grpcListen: "no-port" },
      { grpcListen: "127.0.0.1:99999" },
      { grpcListen: "127.0.0.1:0", grpcTlsCert: tls("server.pem") },
      { grpcListen: "127.0.0.1:0", grpcTlsCert: "/nonexistent.pem", grpcTlsKey: tls("server.key") },
      { grpcListen: "127.0.0.1:0", grpcTlsClientCa: tls("ca.pem") },
      { grpcListen: "127.0.0.1:0", grpcTlsCert: tls("ca.key"), grpcTlsKey: tls("server.key") },
    ];
    for (const opts of bad) {
      const t = await startKernel();
      await t.stop();
      // Refused when the settings are read (a malformed address) or when the listener is set up.
      await assert.rejects(
        async () => new Kernel({ home: t.home, logLevel: "silent", ...opts }).start(),
        ConfigError,
        JSON.stringify(opts),
      );
      // The failed start left nothing listening: a normal kernel starts on the same home.
      const again = new Kernel({ home: t.home, logLevel: "silent" });
      await again.start();
      await again.stop();
      removeHome(t.home);
    }
  });
});

describe("examples/grpc-persona.ts", () => {
  it("runs: falls back to gRPC, and negotiates shm over the socket", () => {
    const ex = fileURLToPath(new URL("../../../../examples/dist/grpc-persona.js", import.meta.url));
    const r = spawnSync(process.execPath, [ex], { encoding: "utf8", timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /connected over: grpc features: \[\]/);
    assert.match(r.stdout, /read back: over gRPC/);
    assert.match(r.stdout, /over the socket: uds features: \[ 'shm' \] shm frames: \{ sent: 1/);
  });
});
