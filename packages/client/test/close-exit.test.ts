import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { runProcess } from "@kpip/protocol/testing";
import { FakeKernel, kernelPool } from "./harness.js";

const FIXTURE = fileURLToPath(new URL("../../test/fixtures/closing-client.mjs", import.meta.url));

/**
 * Runs the fixture in `mode` against `target`; `onReady` runs when it has connected. A process
 * held after close() is killed (the fixture's waits are ten minutes long): a failure, not a hang.
 */
function closingClient(mode: string, target: string, extra: string[], onReady: () => void = () => {}) {
  return runProcess(process.execPath, [FIXTURE, mode, target, ...extra], {
    killAfterMs: 120_000,
    onLine: (line) => line.startsWith("READY") && onReady(),
  });
}

describe("a process whose client is closed exits by itself", () => {
  const kernel = kernelPool();

  /** A kernel process listening on loopback gRPC too, and what the fixture needs to reach it. */
  async function grpcKernel() {
    const k = kernel(["--grpc-listen", "127.0.0.1:0"]);
    await k.start();
    const admin = await k.connect({ reconnect: false });
    const status = (await admin.call("system.status", "kernel://")).payload as {
      transports: { kind: string; address: string }[];
    };
    await admin.close();
    const address = status.transports.find((t) => t.kind === "grpc")?.address;
    assert.ok(address, JSON.stringify(status.transports));
    return { k, args: [address, join(k.home, "admin.identity"), join(k.home, "admin.token")] as const };
  }

  it("over gRPC, after a call and close()", async () => {
    const { args } = await grpcKernel();
    const r = await closingClient("call", args[0], [args[1], args[2]]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /READY ok\nCLOSED closed\n/);
  });

  it("over gRPC, closed while a reconnect waits for the channel to a kernel that is gone (grpc-js's wait reopened the closed channel and held the process to its deadline)", async () => {
    const { k, args } = await grpcKernel();
    const r = await closingClient("dialing", args[0], [args[1], args[2]], () => void k.kill());
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /CLOSED closed/);
  });

  it("over gRPC, closed during the reconnect backoff (its timer held the process to its end)", async () => {
    const { k, args } = await grpcKernel();
    const r = await closingClient("backoff", args[0], [args[1], args[2]], () => void k.kill());
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /CLOSED closed/);
  });

  describe("closed during a reconnect's handshake", () => {
    const fake = new FakeKernel();
    after(() => fake.close());

    it("with a kernel that never answers its HELLO (the handshake's timeout held the process)", async () => {
      await fake.listen();
      fake.answerHellos = 1;
      fake.reset(() => "too-large");
      const r = await closingClient("handshake", fake.path, []);
      assert.equal(r.code, 0, r.err);
      assert.match(r.out, /CLOSED closed/);
    });
  });
});
