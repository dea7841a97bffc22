import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import net from "node:net";
import { describe, it, mock } from "node:test";
import type * as grpc from "@grpc/grpc-js";
import { pino } from "pino";
import { PEER_CLOSE_GRACE_MS, PeerCloseTimeout } from "../src/session/connection.js";
import { GrpcStreamConnection } from "../src/transport/grpc.js";
import { until, withKernel } from "./harness.js";

type Line = { level: number; msg: string; err?: string; graceMs?: number; session?: string };

/** A logger that keeps every line, parsed. */
function recordingLogger() {
  const lines: Line[] = [];
  const logger = pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) });
  return { logger, lines };
}

/** A server-side gRPC call as GrpcStreamConnection uses it; `finishes` says whether end() completes. */
class FakeCall extends EventEmitter {
  destroyed = false;
  writableLength = 0;
  constructor(private readonly finishes: boolean) {
    super();
  }
  getPeer() {
    return "ipv4:127.0.0.1:5000";
  }
  getAuthContext() {
    return {};
  }
  write() {
    return true;
  }
  end() {
    if (this.finishes) process.nextTick(() => this.emit("finish"));
  }
  destroy() {
    this.destroyed = true;
  }
}

const asCall = (c: FakeCall) => c as unknown as grpc.ServerDuplexStream<Buffer, Buffer>;

describe("a peer that keeps its side open after the kernel ended the connection is cut, and the cut is said", () => {
  it("Unix socket: a half-open peer after a fatal ERROR is cut after PEER_CLOSE_GRACE_MS, with a PeerCloseTimeout log line", async () => {
    const { logger, lines } = recordingLogger();
    await withKernel({ logger }, async (t) => {
      const sock = net.connect({ path: t.k.socketPath, allowHalfOpen: true });
      const seen = { data: 0, ended: false, closed: false };
      sock.on("data", (d) => {
        seen.data += d.length;
      });
      sock.on("end", () => {
        seen.ended = true; // the kernel's side is done; this one stays open
      });
      sock.on("close", () => {
        seen.closed = true;
      });
      sock.on("error", () => {});
      await new Promise((r) => sock.once("connect", r));
      sock.write("GET / HTTP/1.1\r\n\r\n");
      await until(() => seen.ended, 10_000, "the kernel's fatal ERROR and end");
      assert.ok(seen.data > 0, "the ERROR frame came first");
      const cut = await until(() => lines.find((l) => l.err === "PeerCloseTimeout"), 10_000, "the cut's log line");
      // The kernel's descriptor is gone: what this side still writes finds no reader.
      const poke = setInterval(() => sock.writable && sock.write("x"), 20);
      await until(() => seen.closed, 10_000, "the peer to see the connection gone");
      clearInterval(poke);
      assert.equal(cut.level, 30);
      assert.equal(cut.graceMs, PEER_CLOSE_GRACE_MS);
      assert.equal(
        cut.msg,
        `the peer kept its side of the uds connection open ${PEER_CLOSE_GRACE_MS} ms after the kernel ended it: cut`,
      );
      assert.match(cut.session ?? "", /./, "the line names the session");
      // The kernel keeps serving.
      const admin = await t.admin();
      assert.equal((await admin.system.health()).status, "ok");
    });
  });

  it("gRPC: a call that does not finish within PEER_CLOSE_GRACE_MS of end() is destroyed and reported as PeerCloseTimeout", () => {
    mock.timers.enable({ apis: ["setTimeout"] });
    try {
      const stuck = new FakeCall(false);
      const conn = new GrpcStreamConnection(asCall(stuck), 1 << 20);
      const cuts: PeerCloseTimeout[] = [];
      let closes = 0;
      conn.onCut((e) => cuts.push(e));
      conn.onClose(() => closes++);
      conn.end();
      mock.timers.tick(PEER_CLOSE_GRACE_MS - 1);
      assert.equal(stuck.destroyed, false, "within the grace: left alone");
      mock.timers.tick(1);
      assert.equal(stuck.destroyed, true, "past it: destroyed");
      assert.equal(closes, 1);
      assert.equal(cuts.length, 1);
      assert.ok(cuts[0] instanceof PeerCloseTimeout);
      assert.equal(cuts[0]?.transport, "grpc");
      assert.equal(cuts[0]?.graceMs, PEER_CLOSE_GRACE_MS);
    } finally {
      mock.timers.reset();
    }
  });

  it("gRPC: a call that finishes after end() is not cut", async () => {
    const done = new FakeCall(true);
    const conn = new GrpcStreamConnection(asCall(done), 1 << 20, false, 5);
    const cuts: PeerCloseTimeout[] = [];
    conn.onCut((e) => cuts.push(e));
    const closed = new Promise<void>((r) => conn.onClose(r));
    conn.end();
    await closed; // "finish" (nextTick) closes it before the 5 ms timer can run
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(done.destroyed, false);
    assert.deepEqual(cuts, []);
  });
});
