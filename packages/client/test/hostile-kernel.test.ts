import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { decodeMessage, encodeMessage, FrameDecoder, generateIdentity, type Message } from "@kpip/protocol";
import { KernelClient, ProtocolViolationError } from "../src/index.js";
import { until } from "./harness.js";

/** What a kernel-side peer writes at each step of the handshake, besides the usual CHALLENGE and WELCOME. */
interface Script {
  /** Written right after CHALLENGE. */
  afterChallenge?: Message[];
  /** Written on ATTEST, before WELCOME. */
  beforeWelcome?: Message[];
  /** Written, as raw bytes, in answer to a REQUEST. */
  onRequest?: Buffer;
  challengeFeatures?: string[];
}

/** A kernel-side peer following `script`; `got` is every message the client sent it. */
async function hostileKernel(script: Script): Promise<{ path: string; got: Message[]; close(): void }> {
  const dir = mkdtempSync(join(tmpdir(), "kpip-hostile-"));
  const path = join(dir, "k.sock");
  const got: Message[] = [];
  const server = net.createServer((s) => {
    const d = new FrameDecoder();
    s.on("error", () => {});
    s.on("data", (chunk) => {
      for (const f of d.push(chunk)) {
        const m = decodeMessage(f);
        got.push(m);
        if (m.type === "HELLO") {
          const challenge: Message = {
            type: "CHALLENGE",
            body: {
              version: 1,
              session: "s1",
              nonce: Buffer.alloc(32),
              kernel: "hostile",
              heartbeatMs: 1000,
              limits: { maxBody: 1 << 20, maxInFlight: 64, dedupeWindowMs: 1000 },
              features: script.challengeFeatures ?? [],
            },
          };
          s.write(encodeMessage(challenge));
          for (const x of script.afterChallenge ?? []) s.write(encodeMessage(x, 1));
        } else if (m.type === "ATTEST") {
          for (const x of script.beforeWelcome ?? []) s.write(encodeMessage(x, 1));
          s.write(encodeMessage({ type: "WELCOME", body: { persona: "alice", handles: [] } }));
        } else if (m.type === "REQUEST" && script.onRequest) s.write(script.onRequest);
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return {
    path,
    got,
    close: () => {
      server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
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
  ];

  it("fails the connect with ProtocolViolationError and tells the kernel why in a fatal PROTOCOL ERROR, as the Python client does", async () => {
    for (const [name, script, code] of cases) {
      const k = await hostileKernel(script);
      open.push(k);
      const err = await KernelClient.connect({
        socket: k.path,
        identity: generateIdentity("alice"),
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
      const told = await until(() => k.got.find((m) => m.type === "ERROR"), 5000, `${name}: the client's ERROR`);
      assert.deepEqual(
        [told.body.class, told.body.code, told.body.fatal],
        ["PROTOCOL", code, true],
        `${name}: ${JSON.stringify(told.body)}`,
      );
      assert.ok(!k.got.some((m) => m.type === "PONG"), `${name}: a PING before WELCOME is not answered`);
    }
  });

  it("after WELCOME, a malformed frame fails the session and the client says so (PROTOCOL BAD_MAGIC) before it closes", async () => {
    const k = await hostileKernel({ onRequest: Buffer.from("GET / HTTP/1.1\r\n\r\n") });
    open.push(k);
    const c = await KernelClient.connect({ socket: k.path, identity: generateIdentity("alice"), reconnect: false });
    await assert.rejects(c.system.health());
    const told = await until(() => k.got.find((m) => m.type === "ERROR"), 5000, "the client's ERROR");
    assert.deepEqual([told.body.class, told.body.code, told.body.fatal], ["PROTOCOL", "BAD_MAGIC", true]);
    await until(() => c.state === "closed", 5000, "the client closed");
  });
});
