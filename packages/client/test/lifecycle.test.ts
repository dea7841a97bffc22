import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Worker } from "node:worker_threads";
import { generateIdentity } from "@kpip/protocol";
import { type ClientState, KernelClient, KernelUnavailableError } from "../src/index.js";
import { countingConnector, kernelPool, until } from "./harness.js";
import { CLIENT_PINGS_AFTER_PONG, HEARTBEAT_MS, LISTENING, PINGS_WRITTEN, SLOTS } from "./stall-peer.js";

describe("client lifecycle against a kernel process", () => {
  const kernel = kernelPool();

  it("goes connecting → handshaking → attesting → ready → reconnecting → … → ready → closing → closed", async () => {
    const k = kernel();
    await k.start();
    const states: ClientState[] = [];
    const c = await k.connect();
    assert.equal(c.state, "ready");
    c.on("state", (s: ClientState) => states.push(s));
    await k.kill();
    await until(() => states.includes("reconnecting"), undefined, "reconnecting");
    await k.start();
    await until(() => c.state === "ready" && c.connections === 2, undefined, "ready again");
    assert.equal((await c.system.health()).status, "ok");
    await c.close();
    assert.deepEqual(states.slice(-2), ["closing", "closed"]);
    for (const s of ["reconnecting", "handshaking", "attesting", "ready"] as const) assert.ok(states.includes(s), s);
  });

  it("close waits for calls in flight", async () => {
    const k = kernel();
    await k.start();
    const c = await k.connect();
    const p = c.system.health();
    await c.close();
    assert.equal((await p).status, "ok");
    assert.equal(c.state, "closed");
  });

  it("fails fast when no kernel is there, or waits for it when asked", async () => {
    const k = kernel();
    await k.start();
    const opts = k.options();
    await k.stop();
    await assert.rejects(k.connect(), (e: unknown) => e instanceof KernelUnavailableError);
    const connector = countingConnector(k.socket);
    const waiting = k.connect({ ...opts, connector, waitForKernel: true, connectTimeoutMs: 60_000 });
    // Started only once the client has tried and failed more than once: it waited, it did not give up.
    await until(() => connector.attempts >= 2, undefined, "a second connection attempt");
    await k.start();
    const c = await waiting;
    assert.equal(c.state, "ready");
    await c.close();
  });

  /** A client of a stall-peer.ts worker; the peer is stopped and its directory removed after `f`. */
  const withStallPeer = async (f: (c: KernelClient, counts: Int32Array, peer: Worker) => Promise<void>) => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-stall-"));
    const counts = new Int32Array(new SharedArrayBuffer(SLOTS * Int32Array.BYTES_PER_ELEMENT));
    const path = join(dir, "peer.sock");
    const peer = new Worker(new URL("./stall-peer.js", import.meta.url), {
      workerData: { stallPeer: { path, shared: counts.buffer } },
    });
    try {
      await until(() => Atomics.load(counts, LISTENING) === 1, undefined, "the peer listening");
      const c = await KernelClient.connect({ socket: path, identity: generateIdentity("alice"), shm: false });
      try {
        await f(c, counts, peer);
      } finally {
        await c.close();
      }
    } finally {
      await peer.terminate();
      rmSync(dir, { recursive: true, force: true });
    }
  };

  it("a client whose own event loop stalled (a busy machine) reads what the kernel sent before it judges the kernel silent", async () => {
    // The peer runs on a worker thread: it writes while this thread is stalled, and says through
    // shared memory when its PING is in the socket. A kernel process may not get the CPU during a
    // stall on a busy machine, and would itself drop a client stalled past 3 intervals.
    await withStallPeer(async (c, counts, peer) => {
      const seen: ClientState[] = [];
      c.on("state", (s: ClientState) => seen.push(s));
      // A stalled event loop, for more than 3 intervals since the client last read, and until the
      // peer's PING waits in the socket: the heartbeat timer runs before it is read.
      const stalled = Date.now();
      peer.postMessage("ping");
      while (Atomics.load(counts, PINGS_WRITTEN) === 0 || Date.now() - stalled <= 3 * HEARTBEAT_MS + 100) {
        // stalled
      }
      // Its PONG says the PING was read; a PING of its own after it, that a heartbeat tick found the link alive.
      await until(
        () => seen.length > 0 || Atomics.load(counts, CLIENT_PINGS_AFTER_PONG) > 0,
        undefined,
        "a heartbeat after the stall",
      );
      assert.deepEqual(seen, [], "the link was never given up");
      assert.equal(c.state, "ready");
      assert.equal(c.connections, 1);
    });
  });

  it("detects a frozen kernel (SIGSTOP) by its silence, not by one missed beat, and recovers after SIGCONT", async () => {
    const k = kernel(["--heartbeat-ms", "500"]);
    await k.start();
    const c = await k.connect();
    try {
      await c.system.health();
      const seen: { state: ClientState; at: number }[] = [];
      c.on("state", (s: ClientState) => seen.push({ state: s, at: Date.now() }));
      const frozenAt = Date.now();
      k.signal("SIGSTOP");
      // the state may pass through reconnecting quickly (a frozen kernel still accepts connections), so record it
      const lost = await until(() => seen.find((x) => x.state === "reconnecting"), undefined, "reconnecting");
      const detected = lost.at - frozenAt;
      // A frozen kernel keeps its socket open: only the heartbeat can tell. It is judged silent
      // after 3 intervals without a byte (the last one came at most ~300 ms before the freeze), so
      // never sooner than 1,200 ms; a busy machine can make it later, never earlier.
      assert.ok(detected >= 1200, `detected after ${detected} ms`);
      k.signal("SIGCONT");
      await until(() => c.state === "ready" && c.connections >= 2, undefined, "ready after SIGCONT");
      assert.equal((await c.system.health()).status, "ok");
    } finally {
      k.signal("SIGCONT");
      await c.close();
    }
  });
});
