import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { decodeIntent, MessageError } from "@kpip/protocol";
import {
  CancelledError,
  type Connector,
  HandshakeClosedError,
  type KernelClient,
  KpipError,
  LocalError,
  ProtocolViolationError,
  RequestTooLargeError,
  TimeoutError,
  UdsConnector,
} from "../src/index.js";
import { FakeKernel, klass, until } from "./harness.js";

const fail = (cls: string) => () => ({ status: "FAILURE" as const, error: cls as "INTERNAL", message: `${cls} failure` });
const ok = () => ({ status: "SUCCESS" as const, payload: { ok: true } });

describe("calls: retries, deadlines, cancellation, errors", () => {
  let fake: FakeKernel;
  let c: KernelClient;
  before(async () => {
    fake = new FakeKernel();
    await fake.listen();
    c = await fake.connect();
  });
  after(async () => {
    await c.close().catch(() => {});
    fake.close();
  });
  const reset: FakeKernel["reset"] = (...steps) => fake.reset(...steps);

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
        (e: unknown) => klass(cls)(e) && typeof (e as KpipError).requestId === "number",
      );
      assert.equal(fake.requests.length, 1);
    });
  }

  it("gives up retrying after maxAttempts", async () => {
    reset(fail("INTERNAL"), fail("INTERNAL"), fail("INTERNAL"), fail("INTERNAL"), fail("INTERNAL"), ok);
    await assert.rejects(c.call("x.y", "kernel://"), klass("INTERNAL"));
    assert.equal(fake.requests.length, 4, "maxAttempts (default 4) requests, then the failure");
  });

  it("re-handshakes once on AUTH, then fails", async () => {
    const hellos = fake.hellos.length;
    reset(fail("AUTH"), ok);
    await c.call("x.y", "kernel://");
    assert.equal(fake.hellos.length, hellos + 1, "a new HELLO on a new connection");
    assert.equal(fake.requests[0]?.id, fake.requests[1]?.id);
    assert.deepEqual(fake.hellos.at(-1), fake.hellos.at(-2), "same client instance id");
    reset(fail("AUTH"), fail("AUTH"), ok);
    await assert.rejects(c.call("x.y", "kernel://"), klass("AUTH"));
    assert.equal(fake.hellos.length, hellos + 2, "one more re-handshake, not a second one for the same call");
    assert.equal(fake.requests.length, 2, "sent once per session; the third step was never asked for");
    assert.equal(c.state, "ready");
  });

  it("puts the deadline in the intent and times out locally", async () => {
    reset(() => "silent");
    const before = Date.now();
    await assert.rejects(c.call("x.y", "kernel://", {}, { deadlineMs: 150 }), (e: unknown) => e instanceof TimeoutError);
    await until(() => fake.requests.length === 1, undefined, "the request at the fake kernel");
    const deadline = decodeIntent(fake.requests[0]?.intent as Uint8Array).constraints?.deadline ?? 0;
    assert.ok(deadline >= before + 150 && deadline <= Date.now() + 150);
  });

  it("retries within the deadline", async () => {
    reset(fail("RESOURCE"), ok);
    const r = await c.call("x.y", "kernel://", {}, { deadlineMs: 30_000 });
    assert.deepEqual(r.payload, { ok: true });
    assert.equal(fake.requests.length, 2);
  });

  it("never retries past the deadline: a failure whose backoff would outlast it is the answer, at once", async (t) => {
    // Full jitter drawn at its top: the retry would wait ~10 s, past the call's 5 s deadline.
    t.mock.method(Math, "random", () => 0.99);
    const d = await fake.connect({ retryBackoff: { initialMs: 10_000, maxMs: 10_000 } });
    try {
      reset(fail("RESOURCE"), ok);
      const err = await d.call("x.y", "kernel://", {}, { deadlineMs: 5_000 }).catch((e) => e);
      // The kernel's RESOURCE answer, not a TimeoutError after waiting out the deadline.
      assert.ok(klass("RESOURCE")(err), String(err));
      assert.equal(fake.requests.length, 1, "sent once, never retried");
    } finally {
      await d.close();
    }
  });

  it("cancels with an AbortSignal", async () => {
    reset(() => "silent");
    const ac = new AbortController();
    const p = c.call("test.aborted_after_sending", "kernel://", {}, { signal: ac.signal });
    ac.abort();
    await assert.rejects(p, (e: unknown) => e instanceof CancelledError);
    const pre = new AbortController();
    pre.abort();
    const q = c.call("test.aborted_before_sending", "kernel://", {}, { signal: pre.signal });
    await assert.rejects(q, (e: unknown) => e instanceof CancelledError);
    // The first call was written before it was aborted (there is no unsending it); the
    // pre-aborted one never leaves the client: a later call's answer (the socket keeps order)
    // shows everything that reached the kernel before it.
    await c.call("test.later", "kernel://");
    assert.deepEqual(
      fake.requests.map((r) => decodeIntent(r.intent).op),
      ["test.aborted_after_sending", "test.later"],
    );
  });

  it("keeps local errors apart from wire errors", async () => {
    reset(() => "silent");
    const local = await c.call("x.y", "kernel://", {}, { deadlineMs: 20 }).catch((e) => e);
    assert.ok(local instanceof LocalError && !(local instanceof KpipError));
    await until(() => fake.requests.length === 1, undefined, "the timed-out request at the fake kernel");
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

  it("offers maxBody in HELLO; a kernel that grants more than offered, or less than 4096, is a protocol violation", async () => {
    const other = new FakeKernel();
    await other.listen();
    try {
      // Granted 1 GiB against an offer of 64 KiB: the client would buffer (and with shm reserve) what it never agreed to.
      other.maxBody = 1 << 30;
      const e1 = await other.connect({ maxBody: 65536, reconnect: false }).catch((x) => x);
      assert.ok(e1 instanceof ProtocolViolationError, String(e1));
      assert.match(e1.message, /maxBody 1073741824, outside 4096\.\.65536/);
      assert.equal(other.helloMaxBodies.at(-1), 65536);
      other.maxBody = 1000;
      const e2 = await other.connect({ reconnect: false }).catch((x) => x);
      assert.ok(e2 instanceof ProtocolViolationError, String(e2));
      assert.equal(other.helloMaxBodies.at(-1), undefined, "no offer unless asked");
      // Within the offer: the session's limit is what the kernel granted.
      other.maxBody = 32768;
      const ok3 = await other.connect({ maxBody: 65536, reconnect: false });
      const err = await ok3.storage.write("obj://ws1/big", Buffer.alloc(40_000, 1)).catch((x) => x);
      assert.ok(err instanceof RequestTooLargeError && err.limit === 32768, String(err));
      await ok3.close();
      for (const bad of [4095, 1.5, 2 ** 32]) await assert.rejects(other.connect({ maxBody: bad }), TypeError);
    } finally {
      other.close();
    }
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
    const d = await fake.connect();
    assert.equal(fake.hellos.length, hellos + 3, "two shed, the third served");
    reset(ok);
    assert.deepEqual((await d.call("x.y", "kernel://")).payload, { ok: true });
    await d.close();
  });

  it("a connection closed before WELCOME without a word (a gRPC kernel shedding one that has not attested) is tried again within the connect timeout", async () => {
    const hellos = fake.hellos.length;
    fake.drop = 2;
    const d = await fake.connect();
    assert.equal(fake.hellos.length, hellos + 3, "two dropped, the third served");
    reset(ok);
    assert.deepEqual((await d.call("x.y", "kernel://")).payload, { ok: true });
    await d.close();
  });

  it("through a connector that cannot dial again (an agent's inherited descriptor) a refused or dropped handshake is final, with the kernel's own error", async () => {
    const once = (): Connector => {
      const uds = new UdsConnector(fake.path);
      return { transport: "agent", redials: false, address: "once", connect: (deadline) => uds.connect(deadline) };
    };
    const hellos = fake.hellos.length;
    fake.shedCode = "SESSION_RATE_LIMITED";
    try {
      fake.shed = 1;
      const e = await fake.connect({ connector: once() }).catch((x: unknown) => x);
      assert.ok(e instanceof KpipError, String(e));
      assert.equal(e.code, "SESSION_RATE_LIMITED");
      fake.drop = 1;
      const f = await fake.connect({ connector: once() }).catch((x: unknown) => x);
      assert.ok(f instanceof HandshakeClosedError, String(f));
      assert.equal(fake.hellos.length, hellos + 2, "one attempt each");
    } finally {
      fake.shed = 0;
      fake.drop = 0;
      fake.shedCode = "HANDSHAKE_SHED";
    }
  });

  it("a handshake refused SESSION_RATE_LIMITED is tried again within the connect timeout; past it connect throws that refusal", async () => {
    const hellos = fake.hellos.length;
    fake.shedCode = "SESSION_RATE_LIMITED";
    try {
      fake.shed = 2;
      const d = await fake.connect();
      assert.equal(fake.hellos.length, hellos + 3, "two refused, the third served");
      await d.close();
      // Refused until the connect timeout: the typed, retryable refusal, not a timeout of the last attempt.
      fake.shed = 1_000_000;
      const e = await fake.connect({ connectTimeoutMs: 200 }).catch((x: unknown) => x);
      assert.ok(e instanceof KpipError, String(e));
      assert.deepEqual([e.errorClass, e.code, e.retryable], ["RESOURCE", "SESSION_RATE_LIMITED", true]);
    } finally {
      fake.shed = 0;
      fake.shedCode = "HANDSHAKE_SHED";
    }
  });

  it("a large read whose ranges are not one version's (a size that grows, a range longer or elsewhere than asked, none before the end) is a protocol violation, not followed for ever", async () => {
    const object = Buffer.from("0123456789");
    type RangeAnswer = { data: Buffer; generation: number; size: number; offset: number };
    /** Answers each range asked of `bytes`, with `alter` changing the answer. */
    const ranged =
      (bytes: Buffer, alter: (p: RangeAnswer, i: number) => RangeAnswer = (p) => p) =>
      (r: Parameters<Parameters<FakeKernel["reset"]>[0]>[0]) => {
        const args = decodeIntent(r.intent).args as { offset: number; length: number };
        const data = bytes.subarray(args.offset, args.offset + args.length);
        const i = fake.requests.length - 1;
        return {
          status: "SUCCESS" as const,
          payload: alter({ data, generation: 7, size: bytes.length, offset: args.offset }, i),
        };
      };
    const read = (steps: ReturnType<typeof ranged>[]) => {
      reset(...steps);
      return c.storage.getLarge("obj://ws/big", { chunkBytes: 4 });
    };
    const honest = Array.from({ length: 3 }, () => ranged(object));
    assert.deepEqual(await read(honest), object);
    const violation = (re: RegExp) => (e: unknown) => e instanceof ProtocolViolationError && re.test(e.message);
    // A size that grows with every range: the stream never reached its end (getLarge grew without bound).
    const growing = Array.from({ length: 8 }, () =>
      ranged(object, (p, i) => ({ ...p, data: Buffer.alloc(4), size: 8 * (i + 2) })),
    );
    await assert.rejects(read(growing), violation(/size/));
    // More bytes than asked, bytes from elsewhere, another generation, nothing before the end.
    await assert.rejects(read([ranged(object, (p) => ({ ...p, data: Buffer.alloc(9) }))]), violation(/9 bytes for a range of 4/));
    await assert.rejects(
      read([ranged(object), ranged(object, (p) => ({ ...p, offset: 0 }))]),
      violation(/at 0 for the one asked at 4/),
    );
    await assert.rejects(read([ranged(object), ranged(object, (p) => ({ ...p, generation: 8 }))]), violation(/generation 8/));
    await assert.rejects(
      read([ranged(object), ranged(object, (p) => ({ ...p, data: Buffer.alloc(0) }))]),
      violation(/0 bytes at 4/),
    );
    // An empty object is one empty read.
    reset(ranged(Buffer.alloc(0)));
    assert.equal((await c.storage.getLarge("obj://ws/empty")).length, 0);
  });

  it("a listing whose PARTIAL pages do not move on (no rows, or a cursor given before) is a protocol violation, not followed for ever", async () => {
    const item = (path: string) => ({ path, size: 1, generation: 1 });
    const partial = (items: ReturnType<typeof item>[], cursor: string) => () => ({
      status: "PARTIAL" as const,
      payload: { items, cursor },
    });
    const last = (items: ReturnType<typeof item>[]) => () => ({ status: "SUCCESS" as const, payload: { items } });
    const list = async () => {
      const got: string[] = [];
      for await (const x of c.storage.list("obj://ws")) got.push(x.path);
      return got;
    };
    // An honest kernel's pages are followed to the end.
    reset(partial([item("a")], "c1"), partial([item("b")], "c2"), last([item("c")]));
    assert.deepEqual(await list(), ["a", "b", "c"]);
    // A cursor given before: the pages would go round for ever.
    reset(partial([item("a")], "c1"), partial([item("b")], "c2"), partial([item("a")], "c1"), last([]));
    await assert.rejects(list(), (e) => e instanceof ProtocolViolationError && /twice/.test(e.message));
    // PARTIAL without a row (with ever new cursors, it would never end).
    reset(partial([], "c1"), last([]));
    await assert.rejects(list(), (e) => e instanceof ProtocolViolationError && /no rows/.test(e.message));
  });
});
