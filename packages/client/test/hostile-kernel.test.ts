import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import {
  type CborValue,
  decodeCanonical,
  decodeMessage,
  encodeMessage,
  encodeToken,
  FrameDecoder,
  generateIdentity,
  HEADER_SIZE,
  type Message,
  MessageType,
  MIN_HEARTBEAT_MS,
  mintToken,
  writeHeader,
} from "@kpip/protocol";
import { KernelClient, ProtocolViolationError, TokenRefreshError } from "../src/index.js";
import type { Link } from "../src/link.js";
import { until } from "./harness.js";

/** Alice's n-th token (of `lifeMs` from now), minted under a root no kernel knows (a hostile kernel never checks it). */
function aliceTokens(): (n: number, lifeMs?: number) => Uint8Array {
  const root = randomBytes(32);
  const now = Date.now();
  return (n, lifeMs = 3_600_000) =>
    encodeToken(
      mintToken(root, {
        id: n.toString(16).padStart(32, "0"),
        kid: "k",
        sub: "alice",
        rights: [{ ops: ["system.health"], targets: ["kernel://"] }],
        limits: {},
        nbf: now - 1000,
        exp: now + lifeMs,
        maxExp: now + 3_600_000,
        chain: [],
      }),
    );
}

/** Connecting as alice with `tokens` fails with ProtocolViolationError, and the client told the kernel `code` in a fatal PROTOCOL ERROR. */
async function refusesHandshake(
  k: { path: string; got: Message[] },
  tokens: Uint8Array[],
  name: string,
  code = "BAD_FIELD",
): Promise<void> {
  const err = await KernelClient.connect({
    socket: k.path,
    identity: generateIdentity("alice"),
    ...(tokens.length ? { tokens } : {}),
    reconnect: false,
    connectTimeoutMs: 10_000,
  }).then(
    async (c) => {
      await c.close().catch(() => {});
      return undefined;
    },
    (e: Error) => e,
  );
  assert.ok(err instanceof ProtocolViolationError, `${name}: ${err}`);
  const told = await until(() => k.got.find((m) => m.type === "ERROR"), 30_000, `${name}: the client's ERROR`);
  assert.deepEqual(
    [told.body.class, told.body.code, told.body.fatal],
    ["PROTOCOL", code, true],
    `${name}: ${JSON.stringify(told.body)}`,
  );
}

/** A kernel-side peer's CHALLENGE (session s1, a zero nonce, maxBody 1 MiB), encoded. */
function challenge(o: { kernel?: string; heartbeatMs?: number; features?: string[]; maxBody?: number } = {}): Uint8Array {
  return encodeMessage({
    type: "CHALLENGE",
    body: {
      version: 1,
      session: "s1",
      nonce: Buffer.alloc(32),
      kernel: o.kernel ?? "hostile",
      heartbeatMs: o.heartbeatMs ?? 1000,
      limits: { maxBody: o.maxBody ?? 1 << 20, maxInFlight: 64, dedupeWindowMs: 1000 },
      features: o.features ?? [],
    },
  });
}

/** What a kernel-side peer writes at each step of the handshake, besides the usual CHALLENGE and WELCOME. */
interface Script {
  /** Written right after CHALLENGE. */
  afterChallenge?: Message[];
  /** Written on ATTEST, before WELCOME. */
  beforeWelcome?: Message[];
  /** Written, as raw bytes, in answer to a REQUEST. */
  onRequest?: Buffer;
  challengeFeatures?: string[];
  /** WELCOME's handles (default: one per token ATTEST presented, numbered from 1). */
  welcomeHandles?: number[];
  /** WELCOME's persona (default: alice, as HELLO said). */
  welcomePersona?: string;
  /** WELCOME's refused (default: none). */
  welcomeRefused?: { index: number; code: string; message: string }[];
}

/** A kernel-side peer on a Unix socket in a temp directory: `onMessage` gets each message the client sends. */
async function peerServer(
  onMessage: (m: Message, s: net.Socket, stream: number) => void,
): Promise<{ path: string; close(): void }> {
  const dir = mkdtempSync(join(tmpdir(), "kpip-hostile-"));
  const path = join(dir, "k.sock");
  const server = net.createServer((s) => {
    const d = new FrameDecoder();
    s.on("error", () => {});
    s.on("data", (chunk) => {
      for (const f of d.push(chunk)) onMessage(decodeMessage(f), s, f.stream);
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return {
    path,
    close: () => {
      server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A kernel-side peer following `script`; `got` is every message the client sent it. */
async function hostileKernel(script: Script): Promise<{ path: string; got: Message[]; close(): void }> {
  const got: Message[] = [];
  const k = await peerServer((m, s) => {
    got.push(m);
    if (m.type === "HELLO") {
      s.write(challenge({ features: script.challengeFeatures ?? [] }));
      for (const x of script.afterChallenge ?? []) s.write(encodeMessage(x, 1));
    } else if (m.type === "ATTEST") {
      for (const x of script.beforeWelcome ?? []) s.write(encodeMessage(x, 1));
      const handles = script.welcomeHandles ?? m.body.tokens.map((_, i) => i + 1);
      const persona = script.welcomePersona ?? "alice";
      const refused = script.welcomeRefused;
      s.write(encodeMessage({ type: "WELCOME", body: { persona, handles, ...(refused ? { refused } : {}) } }));
    } else if (m.type === "REQUEST" && script.onRequest) s.write(script.onRequest);
  });
  return { ...k, got };
}

const RESPONSE: Message = { type: "RESPONSE", body: { version: 1, id: 1, status: "SUCCESS" } };

describe("a kernel that breaks the handshake's order", () => {
  const open: { close(): void }[] = [];
  after(() => {
    for (const o of open) o.close();
  });

  const cases: [string, Script, string][] = [
    ["a RESPONSE before ATTEST", { afterChallenge: [RESPONSE] }, "UNEXPECTED_MESSAGE"],
    ["a RESPONSE before WELCOME", { beforeWelcome: [RESPONSE] }, "UNEXPECTED_MESSAGE"],
    [
      "an EVENT before WELCOME",
      { beforeWelcome: [{ type: "EVENT", body: { subscription: 1, topic: "topic://x", seq: 1 } }] },
      "UNEXPECTED_MESSAGE",
    ],
    ["a PING before WELCOME", { beforeWelcome: [{ type: "PING", body: { seq: 7 } }] }, "UNEXPECTED_MESSAGE"],
    ["a PONG before WELCOME", { beforeWelcome: [{ type: "PONG", body: { seq: 7 } }] }, "UNEXPECTED_MESSAGE"],
    ["a CHALLENGE enabling a feature the client did not offer", { challengeFeatures: ["bogus"] }, "BAD_FIELD"],
    // §6.6: one handle per token ATTEST presented (here none).
    ["a WELCOME with a handle for a token the client never presented", { welcomeHandles: [1] }, "BAD_FIELD"],
  ];

  it("fails the connect with ProtocolViolationError and tells the kernel why in a fatal PROTOCOL ERROR, as the Python client does", async () => {
    for (const [name, script, code] of cases) {
      const k = await hostileKernel(script);
      open.push(k);
      await refusesHandshake(k, [], name, code);
      assert.ok(!k.got.some((m) => m.type === "PONG"), `${name}: a PING before WELCOME is not answered`);
    }
  });

  it("a WELCOME whose handles are not one per token presented in ATTEST (§6.6) fails the connect: ProtocolViolationError and a fatal PROTOCOL BAD_FIELD", async () => {
    const token = aliceTokens();
    for (const handles of [[1], [], [1, 2, 3]]) {
      const k = await hostileKernel({ welcomeHandles: handles });
      open.push(k);
      await refusesHandshake(k, [token(1), token(2)], `${handles.length} handles for 2 tokens`);
    }
    // One per token: the session opens.
    const k = await hostileKernel({});
    open.push(k);
    const c = await KernelClient.connect({
      socket: k.path,
      identity: generateIdentity("alice"),
      tokens: [token(1), token(2)],
      reconnect: false,
    });
    assert.deepEqual(c.handles, [1, 2]);
    await c.close().catch(() => {});
  });

  it("a WELCOME for another persona than HELLO's, naming one handle for two tokens, or refusing a token not presented, one it bound or one twice (§6.6) fails the connect: ProtocolViolationError and a fatal PROTOCOL BAD_FIELD", async () => {
    const token = aliceTokens();
    const why = (index: number) => ({ index, code: "EXPIRED", message: "expired" });
    const cases: [string, Script][] = [
      ["another persona", { welcomePersona: "mallory" }],
      ["one handle for two tokens", { welcomeHandles: [3, 3] }],
      ["a refusal of a token not presented", { welcomeHandles: [1, 0], welcomeRefused: [why(1), why(2)] }],
      ["a refusal of a token it bound", { welcomeHandles: [1, 0], welcomeRefused: [why(0)] }],
      ["a token refused twice", { welcomeHandles: [1, 0], welcomeRefused: [why(1), why(1)] }],
    ];
    for (const [name, script] of cases) {
      const k = await hostileKernel(script);
      open.push(k);
      await refusesHandshake(k, [token(1), token(2)], name);
    }
    // The persona HELLO named, distinct handles, a refusal of the one token left unbound: the session opens.
    const k = await hostileKernel({ welcomeHandles: [0, 7], welcomeRefused: [why(0)] });
    open.push(k);
    const c = await KernelClient.connect({
      socket: k.path,
      identity: generateIdentity("alice"),
      tokens: [token(1), token(2)],
      reconnect: false,
    });
    assert.deepEqual([c.handles, c.refusedTokens], [[7], [why(0)]]);
    await c.close().catch(() => {});
  });

  it("after WELCOME, a malformed frame fails the session and the client says so (PROTOCOL BAD_MAGIC) before it closes", async () => {
    const k = await hostileKernel({ onRequest: Buffer.from("GET / HTTP/1.1\r\n\r\n") });
    open.push(k);
    const c = await KernelClient.connect({ socket: k.path, identity: generateIdentity("alice"), reconnect: false });
    await assert.rejects(c.system.health());
    const told = await until(() => k.got.find((m) => m.type === "ERROR"), 30_000, "the client's ERROR");
    assert.deepEqual([told.body.class, told.body.code, told.body.fatal], ["PROTOCOL", "BAD_MAGIC", true]);
    await until(() => c.state === "closed", 30_000, "the client closed");
  });
});

describe("a kernel that sends frames larger than a handshake needs", () => {
  /** A frame of `type` declaring `n` body bytes of 0xff (a CBOR break: undecodable), header and body written at once. */
  const oversized = (type: number, n: number): Buffer => {
    const f = Buffer.alloc(HEADER_SIZE + n, 0xff);
    writeHeader(f, 0, { type, flags: 0, stream: 0, length: n });
    return f;
  };

  it("before CHALLENGE a frame body over 16 KiB (or over the maxBody offered), before WELCOME over 1 MiB, is fatal TOO_LARGE at its header, never buffered", async () => {
    const open: { close(): void }[] = [];
    try {
      // [name, the client's HELLO.maxBody, what the kernel-side peer writes on HELLO, on ATTEST]
      const cases: [string, number | undefined, Buffer[], Buffer[]][] = [
        ["a 2 MiB CHALLENGE", undefined, [oversized(MessageType.CHALLENGE, 2 << 20)], []],
        ["a 17 KiB ERROR before CHALLENGE", undefined, [oversized(MessageType.ERROR, 17 * 1024)], []],
        ["an 8 KiB CHALLENGE to a client that offered maxBody 4096", 4096, [oversized(MessageType.CHALLENGE, 8 * 1024)], []],
        [
          "a 2 MiB WELCOME after a CHALLENGE granting 16 MiB",
          undefined,
          [Buffer.from(challenge({ maxBody: 16 << 20 }))],
          [oversized(MessageType.WELCOME, 2 << 20)],
        ],
      ];
      for (const [name, maxBody, onHello, onAttest] of cases) {
        const got: Message[] = [];
        const k = await peerServer((m, s) => {
          got.push(m);
          if (m.type === "HELLO") for (const b of onHello) s.write(b);
          else if (m.type === "ATTEST") for (const b of onAttest) s.write(b);
        });
        open.push(k);
        const err = await KernelClient.connect({
          socket: k.path,
          identity: generateIdentity("alice"),
          reconnect: false,
          connectTimeoutMs: 30_000,
          ...(maxBody !== undefined ? { maxBody } : {}),
        }).then(
          async (c) => {
            await c.close().catch(() => {});
            return undefined;
          },
          (e: Error) => e,
        );
        assert.ok(err instanceof ProtocolViolationError, `${name}: ${err}`);
        assert.match(err.message, /TOO_LARGE|exceeds the limit/, name);
        const told = await until(() => got.find((m) => m.type === "ERROR"), 30_000, `${name}: the client's ERROR`);
        assert.deepEqual([told.body.class, told.body.code, told.body.fatal], ["PROTOCOL", "TOO_LARGE", true], name);
      }
    } finally {
      for (const o of open) o.close();
    }
  });
});

describe("a kernel that names its shared-memory segments", () => {
  it("cannot place the client's segment outside /dev/shm: a kernel id or session with '/' and '..' in CHALLENGE names a flat segment", async (t) => {
    if (readdirSync("/dev").indexOf("shm") < 0) return t.skip("no /dev/shm");
    // The segment's name is /kpip.<kernel>.<session>.p, and '/' was a character names kept: with
    // a directory kpip.x… in /dev/shm (anyone may make one), `x…/../../..<dir>/k` put the client's
    // segment — its request bodies — at a path the kernel chose.
    const outside = mkdtempSync(join(tmpdir(), "kpip-shm-outside-"));
    const stepping = `kpip.x${randomBytes(4).toString("hex")}`;
    mkdirSync(join("/dev/shm", stepping));
    const kernel = `${stepping.slice("kpip.".length)}/../../..${outside}/k`;
    const dir = mkdtempSync(join(tmpdir(), "kpip-hostile-"));
    const path = join(dir, "k.sock");
    let shmFrames = 0;
    const server = net.createServer((s) => {
      const d = new FrameDecoder();
      s.on("error", () => {});
      s.on("data", (chunk) => {
        for (const f of d.push(chunk)) {
          if (f.flags !== 0) {
            shmFrames++;
            continue;
          }
          const m = decodeMessage(f);
          if (m.type === "HELLO") {
            s.write(challenge({ kernel, features: ["shm"] }));
          } else if (m.type === "ATTEST") s.write(encodeMessage({ type: "WELCOME", body: { persona: "alice", handles: [] } }));
        }
      });
    });
    await new Promise<void>((r) => server.listen(path, r));
    const c = await KernelClient.connect({ socket: path, identity: generateIdentity("alice"), reconnect: false });
    try {
      // A body over the shared-memory threshold: it goes through the client's own segment.
      const call = c.call("storage.write", "obj://ws/x", { data: Buffer.alloc(256 * 1024, 7) }, { deadlineMs: 2000 });
      call.catch(() => {});
      await until(() => shmFrames > 0, 10_000, "the body sent through shared memory");
      assert.deepEqual(readdirSync(outside), [], "nothing was created outside /dev/shm");
      assert.deepEqual(readdirSync(join("/dev/shm", stepping)), []);
    } finally {
      await c.close().catch(() => {});
      server.close();
      rmSync(dir, { recursive: true, force: true });
      rmSync(outside, { recursive: true, force: true });
      rmSync(join("/dev/shm", stepping), { recursive: true, force: true });
    }
  });
});

/**
 * A kernel-side peer that makes the usual handshake (WELCOME for alice, a handle per token),
 * then hands every later message to `onMessage` with its socket and stream.
 */
async function welcomingKernel(
  onMessage: (m: Message, s: net.Socket, stream: number) => void,
): Promise<{ path: string; close(): void }> {
  return peerServer((m, s, stream) => {
    if (m.type === "HELLO") s.write(challenge({ heartbeatMs: 60_000 }));
    else if (m.type === "ATTEST") {
      const handles = m.body.tokens.map((_, i) => i + 1);
      s.write(encodeMessage({ type: "WELCOME", body: { persona: "alice", handles } }));
    } else if (m.type === "GOODBYE") s.end();
    else onMessage(m, s, stream);
  });
}

const success = (id: number, stream: number, payload?: CborValue) =>
  encodeMessage({ type: "RESPONSE", body: { version: 1, id, status: "SUCCESS", ...(payload ? { payload } : {}) } }, stream);

describe("a kernel whose listing pages are not what a listing answers", () => {
  it("rows that are not an array, or a cursor that is not text, fail the listing with ProtocolViolationError; no character is handed out as a row", async () => {
    for (const [name, payload] of [
      ["rows as a string", { items: "abcdef", cursor: "c1" }],
      ["rows as a map", { items: { a: 1 }, cursor: "c1" }],
      ["a cursor that is a number", { items: [{ key: "a" }], cursor: 7 }],
      ["a cursor that is bytes", { items: [{ key: "a" }], cursor: new Uint8Array([1, 2]) }],
    ] as [string, CborValue][]) {
      const k = await welcomingKernel((m, s, stream) => {
        if (m.type !== "REQUEST") return;
        s.write(encodeMessage({ type: "RESPONSE", body: { version: 1, id: m.body.id, status: "PARTIAL", payload } }, stream));
      });
      const c = await KernelClient.connect({ socket: k.path, identity: generateIdentity("alice"), reconnect: false });
      const got: unknown[] = [];
      try {
        await assert.rejects(
          (async () => {
            for await (const e of c.storage.list("obj://ws")) got.push(e);
          })(),
          ProtocolViolationError,
          name,
        );
        assert.ok(
          got.every((e) => typeof e !== "string"),
          `${name}: ${JSON.stringify(got)}`,
        );
      } finally {
        await c.close().catch(() => {});
        k.close();
      }
    }
  });
});

describe("a kernel that PINGs and never reads", () => {
  it("does not grow the client's unsent bytes: past PONG_BACKLOG queued, a PING goes unanswered (as in the Python client)", async () => {
    const PINGS = 100_000;
    let pongs = 0;
    let pongsBeforeSecond = -1;
    let requests = 0;
    let resume = () => {};
    const k = await welcomingKernel((m, s, stream) => {
      if (m.type === "PONG") pongs++;
      else if (m.type === "REQUEST" && ++requests === 1) {
        // From now on nothing is read; a flood of PINGs, then the answer: once the client has
        // it, it has handled every PING before it.
        s.pause();
        const ping = encodeMessage({ type: "PING", body: { seq: 1 } });
        s.write(Buffer.concat(Array.from({ length: PINGS }, () => ping)));
        s.write(success(m.body.id, stream));
        resume = () => s.resume();
      } else if (m.type === "REQUEST") {
        pongsBeforeSecond = pongs;
        s.write(success(m.body.id, stream));
      }
    });
    const c = await KernelClient.connect({ socket: k.path, identity: generateIdentity("alice"), reconnect: false });
    try {
      await c.call("first.call", "kernel://");
      resume();
      await c.call("second.call", "kernel://");
      // What the client queued is what reached the kernel once it read: the socket's buffers and
      // PONG_BACKLOG, not a PONG for each of the 100,000 PINGs (~2.6 MB).
      assert.ok(pongsBeforeSecond > 0, "PINGs were answered while the client's queue was short");
      assert.ok(pongsBeforeSecond < PINGS / 4, `${pongsBeforeSecond} PONGs were queued for ${PINGS} PINGs`);
    } finally {
      await c.close().catch(() => {});
      k.close();
    }
  });
});

describe("a kernel whose answers the client keeps are not what the op answers", () => {
  /** A kernel answering each op with `answers[op]`'s payload (SUCCESS). */
  const answering = (answers: Record<string, Record<string, unknown>>) =>
    welcomingKernel((m, s, stream) => {
      if (m.type !== "REQUEST") return;
      const op = String((decodeCanonical(m.body.intent) as { op: string }).op);
      s.write(success(m.body.id, stream, (answers[op] ?? {}) as CborValue));
    });

  it("a subscription id that is no positive integer fails the subscribe with ProtocolViolationError, not a subscription that never hears", async () => {
    for (const subscription of [-1, 0, "7", 2n ** 60n, null]) {
      const k = await answering({ "event.subscribe": { subscription }, "storage.watch": { subscription } });
      const c = await KernelClient.connect({ socket: k.path, identity: generateIdentity("alice"), reconnect: false });
      try {
        await assert.rejects(c.subscribe("topic://t/x"), ProtocolViolationError, String(subscription));
        await assert.rejects(c.watch("obj://ws/**"), ProtocolViolationError, String(subscription));
      } finally {
        await c.close().catch(() => {});
        k.close();
      }
    }
  });

  it("a refresh answered with a token that is not bytes, or bound under a handle that is no positive integer, fails as TokenRefreshError (ProtocolViolationError its cause)", async () => {
    const token = aliceTokens();
    for (const [answer, what] of [
      [{ "token.refresh": { token: 2 ** 34 } }, /token\.refresh's token/],
      [{ "token.refresh": { token: token(2, 3_600_000) }, "token.bind": { handle: "x" } }, /token\.bind's handle/],
    ] as const) {
      const k = await answering(answer as Record<string, Record<string, unknown>>);
      // Refreshed halfway through its life (2.5 s from nbf): the margin is longer than that.
      const c = await KernelClient.connect({
        socket: k.path,
        identity: generateIdentity("alice"),
        tokens: [token(1, 1500)],
        refreshMarginMs: 120_000,
        reconnect: false,
      });
      try {
        const failed = await new Promise<Error>((r) => c.once("tokenRefreshFailed", r));
        assert.ok(failed instanceof TokenRefreshError, String(failed));
        assert.ok(failed.cause instanceof ProtocolViolationError, String(failed.cause));
        assert.match(String((failed.cause as Error).message), what);
      } finally {
        await c.close().catch(() => {});
        k.close();
      }
    }
  });
});

describe("a kernel that refreshes tokens into ones already expiring", () => {
  it("gets three tries, then a TokenRefreshError: the refresher does not ask again at once, for ever", async () => {
    const token = aliceTokens();
    let refreshes = 0;
    const k = await welcomingKernel((m, s, stream) => {
      if (m.type !== "REQUEST") return;
      const op = String((decodeCanonical(m.body.intent) as { op: string }).op);
      if (op === "token.refresh") refreshes++;
      // A token at its expiry: due for refresh the moment it is held.
      const payload = op === "token.refresh" ? { token: token(2, 0) } : op === "token.bind" ? { handle: 1 } : {};
      s.write(success(m.body.id, stream, payload as CborValue));
    });
    const c = await KernelClient.connect({
      socket: k.path,
      identity: generateIdentity("alice"),
      tokens: [token(1, 100)],
      refreshMarginMs: 120_000,
      reconnect: false,
    });
    try {
      let failed: Error | undefined;
      c.once("tokenRefreshFailed", (e: Error) => {
        failed = e;
      });
      await until(() => failed !== undefined || refreshes > 10, 30_000, "the refresher to give up");
      assert.ok(failed instanceof TokenRefreshError, String(failed));
      assert.match(failed.message, /already due for refresh/);
      assert.equal(refreshes, 3);
      await assert.rejects(c.call("system.health", "kernel://"), TokenRefreshError);
      await c.call("system.health", "kernel://");
      assert.equal(refreshes, 3, "asked no more");
    } finally {
      await c.close().catch(() => {});
      k.close();
    }
  });

  it("a token due again a few hundred ms after each refresh (not at once) counts as futile too: three tries, then a TokenRefreshError", async () => {
    const root = randomBytes(32);
    let made = 0;
    /** Alice's next token: `life` ms from `nbf` (now, unless given), expiring `exp` ms from now. */
    const token = (exp: number, nbf = Date.now()) =>
      encodeToken(
        mintToken(root, {
          id: (++made).toString(16).padStart(32, "0"),
          kid: "k",
          sub: "alice",
          rights: [{ ops: ["system.health"], targets: ["kernel://"] }],
          limits: {},
          nbf,
          exp: Date.now() + exp,
          maxExp: Date.now() + 7_200_000,
          chain: [],
        }),
      );
    let refreshes = 0;
    const k = await welcomingKernel((m, s, stream) => {
      if (m.type !== "REQUEST") return;
      const op = String((decodeCanonical(m.body.intent) as { op: string }).op);
      if (op === "token.refresh") refreshes++;
      // 400 ms of life from now: due for refresh 200 ms after it is held, never at once — the
      // refresher asked again 200 ms later, for ever (only a token due at once counted).
      const payload = op === "token.refresh" ? { token: token(400) } : op === "token.bind" ? { handle: 1 } : {};
      s.write(success(m.body.id, stream, payload as CborValue));
    });
    // The token it was given lives an hour (from an hour ago): due for refresh now.
    const c = await KernelClient.connect({
      socket: k.path,
      identity: generateIdentity("alice"),
      tokens: [token(100, Date.now() - 3_600_000)],
      refreshMarginMs: 120_000,
      reconnect: false,
    });
    try {
      let failed: Error | undefined;
      c.once("tokenRefreshFailed", (e: Error) => {
        failed = e;
      });
      await until(() => failed !== undefined || refreshes > 10, 60_000, "the refresher to give up");
      assert.ok(failed instanceof TokenRefreshError, `${refreshes} refreshes, and no TokenRefreshError: ${failed}`);
      assert.match(failed.message, /due for refresh/);
      assert.equal(refreshes, 3);
    } finally {
      await c.close().catch(() => {});
      k.close();
    }
  });
});

describe("a kernel that writes a large frame with its WELCOME", () => {
  it("a frame past the handshake's 1 MiB in the read that holds WELCOME is held to the session's maxBody: handled", async () => {
    const pongs: number[] = [];
    const k = await peerServer((m, s) => {
      if (m.type === "HELLO") s.write(challenge({ maxBody: 4 << 20 }));
      else if (m.type === "ATTEST") {
        const welcome = encodeMessage({ type: "WELCOME", body: { persona: "alice", handles: [] } });
        // One write: the 2 MiB PING's header comes in the client's read of WELCOME.
        const ping = encodeMessage({ type: "PING", body: { seq: 7, pad: Buffer.alloc(2 << 20) } } as unknown as Message);
        s.write(Buffer.concat([welcome, ping]));
      } else if (m.type === "PONG") pongs.push(m.body.seq);
      else if (m.type === "GOODBYE") s.end();
    });
    const c = await KernelClient.connect({ socket: k.path, identity: generateIdentity("alice"), reconnect: false });
    try {
      await until(() => pongs.includes(7), undefined, "the PONG to the large PING");
      assert.equal(c.state, "ready");
    } finally {
      await c.close().catch(() => {});
      k.close();
    }
  });
});

describe("a kernel whose CHALLENGE sets heartbeatMs 0 or 1", () => {
  it("a kernel silent for 3 × heartbeatMs is dead (§8.5), not after 2 ×", async () => {
    const hb = 60_000;
    // Answers the handshake, then never another frame (no PONG): only silence can tell.
    const k = await peerServer((m, s) => {
      if (m.type === "HELLO") s.write(challenge({ heartbeatMs: hb }));
      else if (m.type === "ATTEST") s.write(encodeMessage({ type: "WELCOME", body: { persona: "alice", handles: [] } }));
      else if (m.type === "GOODBYE") s.end();
    });
    const c = await KernelClient.connect({ socket: k.path, identity: generateIdentity("alice"), reconnect: false });
    try {
      const link = (c as unknown as { link: Link }).link;
      assert.equal(link.heartbeatMs, hb);
      // The client's timer, driven by hand (its own ticks, at Date.now(), are far from these).
      const t0 = link.lastSeen;
      // Silent past 2 intervals, on two ticks in a row: alive.
      link.tick(t0 + 2 * hb + 1);
      link.tick(t0 + 2 * hb + 50);
      link.tick(t0 + 3 * hb);
      assert.equal(link.phase, "ready", "given up before 3 intervals of silence");
      // Past 3, judged on two ticks in a row (as the kernel judges its peers).
      link.tick(t0 + 3 * hb + 1);
      assert.equal(link.phase, "ready");
      link.tick(t0 + 3 * hb + 50);
      assert.equal(link.phase, "dead");
    } finally {
      await c.close().catch(() => {});
      k.close();
    }
  });

  it("0 is no heartbeat and 1 is 100 ms: the client neither PINGs on every tick nor calls the kernel silent after a few ms", async () => {
    for (const [announced, kept] of [
      [0, 0],
      [1, MIN_HEARTBEAT_MS],
    ] as const) {
      const k = await peerServer((m, s) => {
        if (m.type === "HELLO") s.write(challenge({ heartbeatMs: announced }));
        else if (m.type === "ATTEST") s.write(encodeMessage({ type: "WELCOME", body: { persona: "alice", handles: [] } }));
        else if (m.type === "PING") s.write(encodeMessage({ type: "PONG", body: { seq: m.body.seq } }));
        else if (m.type === "GOODBYE") s.end();
      });
      const c = await KernelClient.connect({ socket: k.path, identity: generateIdentity("alice"), reconnect: false });
      try {
        const link = (c as unknown as { link: Link }).link;
        assert.equal(link.heartbeatMs, kept, `heartbeatMs ${announced}`);
        // The client's 50 ms timer, driven by hand (synchronously: the timer cannot run between):
        // a kernel quiet since its last frame. At 0 the first tick found it "silent for more than
        // 0 ms" and the second ended the link.
        const sent: string[] = [];
        const send = link.send.bind(link);
        link.send = (m) => {
          sent.push(m.type);
          send(m);
        };
        const t0 = link.lastSeen;
        for (let i = 1; i <= 5; i++) link.tick(t0 + i * 10);
        assert.equal(link.phase, "ready", `heartbeatMs ${announced}: the link ended`);
        assert.deepEqual(sent, [], `heartbeatMs ${announced}: PINGed within 50 ms of the kernel's last frame`);
        link.tick(t0 + 60);
        assert.deepEqual(sent, announced === 0 ? [] : ["PING"]);
        if (announced === 0) {
          // No heartbeat: silence never ends the link (a closed socket does).
          link.tick(t0 + 3_600_000);
          link.tick(t0 + 3_600_050);
          assert.equal(link.phase, "ready");
          assert.deepEqual(sent, []);
        }
      } finally {
        await c.close().catch(() => {});
        k.close();
      }
    }
  });
});
