import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  decodeIntent,
  decodeMessage,
  encodeMessage,
  FrameDecoder,
  generateIdentity,
  MessageError,
  type Request,
  type Response,
} from "@kpip/protocol";
import { CancelledError, KernelClient, KpipError, LocalError, RequestTooLargeError, TimeoutError } from "../src/index.js";

/**
 * A scripted fake kernel: accepts any attestation and answers requests from a queue; a step
 * "too-large" ends the session as a kernel does over an oversized frame (fatal TOO_LARGE).
 */
class FakeKernel {
  readonly server: net.Server;
  readonly dir = mkdtempSync(join(tmpdir(), "kpip-fake-"));
  readonly path = join(this.dir, "fake.sock");
  hellos: Buffer[] = [];
  /** HELLOs to answer with fatal RESOURCE/HANDSHAKE_SHED, as a kernel under a connection flood does. */
  shed = 0;
  requests: Request[] = [];
  script: ((r: Request) => Omit<Response, "version" | "id"> | "silent" | "too-large")[] = [];
  constructor() {
    this.server = net.createServer((s) => {
      const d = new FrameDecoder();
      s.on("error", () => {});
      s.on("data", (chunk) => {
        for (const f of d.push(chunk)) {
          const m = decodeMessage(f);
          if (m.type === "HELLO") {
            this.hellos.push(Buffer.from(m.body.instance));
            if (this.shed > 0) {
              this.shed--;
              const body = { class: "RESOURCE" as const, code: "HANDSHAKE_SHED", message: "shed", fatal: true };
              s.end(encodeMessage({ type: "ERROR", body }));
              continue;
            }
            s.write(
              encodeMessage({
                type: "CHALLENGE",
                body: {
                  version: 1,
                  session: `s${this.hellos.length}`,
                  nonce: Buffer.alloc(32),
                  kernel: "fake",
                  heartbeatMs: 1000,
                  limits: { maxBody: 1 << 20, maxInFlight: 64, dedupeWindowMs: 1000 },
                  features: [],
                },
              }),
            );
          } else if (m.type === "ATTEST") {
            s.write(encodeMessage({ type: "WELCOME", body: { persona: "alice", handles: [] } }));
          } else if (m.type === "REQUEST") {
            this.requests.push(m.body);
            const step = this.script.shift() ?? (() => ({ status: "SUCCESS" as const }));
            const out = step(m.body);
            if (out === "too-large") {
              const body = { class: "PROTOCOL" as const, code: "TOO_LARGE", message: "frame too large", fatal: true };
              s.end(encodeMessage({ type: "ERROR", body }));
            } else if (out !== "silent")
              s.write(encodeMessage({ type: "RESPONSE", body: { version: 1, id: m.body.id, ...out } as Response }, f.stream));
          } else if (m.type === "PING") {
            s.write(encodeMessage({ type: "PONG", body: { seq: m.body.seq } }));
          }
        }
      });
    });
  }
  listen(): Promise<void> {
    return new Promise((r) => this.server.listen(this.path, r));
  }
  close(): void {
    this.server.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

const fail = (cls: string) => () => ({ status: "FAILURE" as const, error: cls as "INTERNAL", message: `${cls} failure` });
const ok = () => ({ status: "SUCCESS" as const, payload: { ok: true } });

describe("calls: retries, deadlines, cancellation, errors", () => {
  let fake: FakeKernel;
  let c: KernelClient;
  before(async () => {
    fake = new FakeKernel();
    await fake.listen();
    c = await KernelClient.connect({
      socket: fake.path,
      identity: generateIdentity("alice"),
      retryBackoff: { initialMs: 5, maxMs: 20 },
      reconnectBackoff: { initialMs: 5, maxMs: 20 },
    });
  });
  after(async () => {
    await c.close().catch(() => {});
    fake.close();
  });
  const reset = (...steps: FakeKernel["script"]) => {
    fake.requests = [];
    fake.script = steps;
  };

  it("retries RESOURCE and INTERNAL with the same request id", async () => {
    reset(fail("RESOURCE"), fail("INTERNAL"), ok);
    const r = await c.call("x.y", "kernel://");
    assert.deepEqual(r.payload, { ok: true });
    assert.equal(fake.requests.length, 3);
    assert.equal(new Set(fake.requests.map((q) => q.id)).size, 1);
    assert.equal(new Set(fake.requests.map((q) => Buffer.from(q.intent).toString("hex"))).size, 1);
  });

  for (const cls of ["SEMANTIC", "PERMISSION", "CAPABILITY", "PROTOCOL"]) {
    it(`never retries ${cls}`, async () => {
      reset(fail(cls), ok);
      await assert.rejects(
        c.call("x.y", "kernel://"),
        (e: unknown) => e instanceof KpipError && e.errorClass === cls && typeof e.requestId === "number",
      );
      assert.equal(fake.requests.length, 1);
    });
  }

  it("gives up retrying after maxAttempts", async () => {
    reset(fail("INTERNAL"), fail("INTERNAL"), fail("INTERNAL"), fail("INTERNAL"), fail("INTERNAL"), ok);
    await assert.rejects(c.call("x.y", "kernel://"), (e: unknown) => e instanceof KpipError && e.errorClass === "INTERNAL");
    assert.equal(fake.requests.length, 4);
  });

  it("re-handshakes once on AUTH, then fails", async () => {
    const hellos = fake.hellos.length;
    reset(fail("AUTH"), ok);
    await c.call("x.y", "kernel://");
    assert.equal(fake.hellos.length, hellos + 1, "a new HELLO on a new connection");
    assert.equal(fake.requests[0]?.id, fake.requests[1]?.id);
    assert.deepEqual(fake.hellos.at(-1), fake.hellos.at(-2), "same client instance id");
    reset(fail("AUTH"), fail("AUTH"), ok);
    await assert.rejects(c.call("x.y", "kernel://"), (e: unknown) => e instanceof KpipError && e.errorClass === "AUTH");
    await new Promise((r) => setTimeout(r, 100));
  });

  it("puts the deadline in the intent and times out locally", async () => {
    reset(() => "silent");
    const before = Date.now();
    await assert.rejects(c.call("x.y", "kernel://", {}, { deadlineMs: 150 }), (e: unknown) => e instanceof TimeoutError);
    const deadline = decodeIntent(fake.requests[0]?.intent as Uint8Array).constraints?.deadline ?? 0;
    assert.ok(deadline >= before + 150 && deadline <= Date.now() + 150);
  });

  it("does not retry past the deadline", async () => {
    reset(fail("RESOURCE"), fail("RESOURCE"), fail("RESOURCE"), ok);
    const r = c.call("x.y", "kernel://", {}, { deadlineMs: 1 });
    await assert.rejects(r, (e: unknown) => e instanceof TimeoutError || (e instanceof KpipError && e.errorClass === "RESOURCE"));
    assert.ok(fake.requests.length <= 1);
  });

  it("cancels with an AbortSignal", async () => {
    reset(() => "silent");
    const ac = new AbortController();
    const p = c.call("x.y", "kernel://", {}, { signal: ac.signal });
    ac.abort();
    await assert.rejects(p, (e: unknown) => e instanceof CancelledError);
    const pre = new AbortController();
    pre.abort();
    await assert.rejects(c.call("x.y", "kernel://", {}, { signal: pre.signal }), (e: unknown) => e instanceof CancelledError);
    // The first call was written before it was aborted (there is no unsending it); the
    // pre-aborted one never leaves the client.
    while (fake.requests.length < 1) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(fake.requests.length, 1);
  });

  it("keeps local errors apart from wire errors", async () => {
    reset(() => "silent");
    const local = await c.call("x.y", "kernel://", {}, { deadlineMs: 20 }).catch((e) => e);
    assert.ok(local instanceof LocalError && !(local instanceof KpipError));
    assert.equal(fake.requests.length, 1);
    reset(fail("PERMISSION"));
    const wire = await c.call("x.y", "kernel://").catch((e) => e);
    assert.ok(wire instanceof KpipError && !(wire instanceof LocalError));
    assert.equal(wire.errorClass, "PERMISSION");
    assert.equal(fake.requests.length, 1);
  });

  it("sends context.execution when a call names one, and refuses one over 128 characters before sending", async () => {
    reset(ok);
    await c.call("x.y", "kernel://", {}, { execution: "mcp:host/1.0#7" });
    assert.equal(fake.requests[0]?.context.execution, "mcp:host/1.0#7");
    reset(ok);
    const e = await c.call("x.y", "kernel://", {}, { execution: "x".repeat(129) }).catch((x) => x);
    assert.ok(e instanceof MessageError, String(e));
    assert.equal(e.code, "BAD_FIELD");
    assert.equal(fake.requests.length, 0);
  });

  it("a request over the negotiated maxBody is refused locally with RequestTooLargeError naming the limit, never sent", async () => {
    reset(ok);
    const connections = c.connections;
    const err = await c.storage.write("obj://ws1/big", Buffer.alloc(2 << 20, 1)).catch((e) => e);
    assert.ok(err instanceof RequestTooLargeError, String(err));
    assert.equal(err.limit, 1 << 20);
    assert.ok(err.size > 2 << 20);
    assert.match(err.message, /limit of 1048576 bytes/);
    assert.equal(fake.requests.length, 0, "nothing was sent");
    assert.equal(c.connections, connections, "the session was not touched");
    assert.deepEqual((await c.call("x.y", "kernel://")).payload, { ok: true });
  });

  it("a request the kernel refused as too large fails with RequestTooLargeError and is never resent", async () => {
    const hellos = fake.hellos.length;
    reset(() => "too-large", ok);
    const err = await c.call("x.y", "kernel://", { data: Buffer.alloc(1000) }).catch((e) => e);
    assert.ok(err instanceof RequestTooLargeError, String(err));
    assert.match(err.message, /refused a request of \d+ bytes as too large/);
    // The client reconnects (the session ended) and serves the next call; the refused one stays refused.
    assert.deepEqual((await c.call("x.y", "kernel://")).payload, { ok: true });
    assert.ok(fake.hellos.length > hellos, "reconnected");
    assert.equal(fake.requests.length, 2, "the refused request was sent once, never again");
    assert.notEqual(fake.requests[0]?.id, fake.requests[1]?.id);
  });

  it("a handshake the kernel shed under a connection flood is tried again within the connect timeout", async () => {
    const hellos = fake.hellos.length;
    fake.shed = 2;
    const d = await KernelClient.connect({
      socket: fake.path,
      identity: generateIdentity("alice"),
      reconnectBackoff: { initialMs: 5, maxMs: 20 },
    });
    assert.equal(fake.hellos.length, hellos + 3, "two shed, the third served");
    reset(ok);
    assert.deepEqual((await d.call("x.y", "kernel://")).payload, { ok: true });
    await d.close();
  });
});
