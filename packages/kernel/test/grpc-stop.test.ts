import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { KernelClient, loadIdentity } from "@kpip/client";
import {
  attestationTranscript,
  decodeMessage,
  encodeIntent,
  encodeMessage,
  FrameDecoder,
  HEADER_SIZE,
  type Message,
  signBytes,
} from "@kpip/protocol";
import { removeHome, until } from "./harness.js";
import { H2_PREFACE, h2Frame, helloFrame } from "./wire.js";

const FIXTURE = fileURLToPath(new URL("../../test/fixtures/grpc-kernel.mjs", import.meta.url));

/**
 * Runs a kernel process (fixtures/grpc-kernel.mjs), opens `peers` to its gRPC address, stops it
 * (SIGTERM) and waits for it to exit by itself: its exit code and output. One still running long
 * after it stopped is killed (the kernel's own timers are ten minutes long): a failure, not a hang.
 */
async function stopWith(mode: "plain" | "tls", peers: (port: number, home: string) => Promise<(() => void)[]>) {
  const home = mkdtempSync(join(tmpdir(), "kpip-"));
  const child = spawn(process.execPath, [FIXTURE, home, mode], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stderr.on("data", (d) => {
    err += d;
  });
  const exited = new Promise<number | string | null>((resolve) => child.once("exit", (code, signal) => resolve(signal ?? code)));
  const guard = setTimeout(() => child.kill("SIGKILL"), 120_000);
  const open: (() => void)[] = [];
  try {
    const address = await new Promise<string>((resolve, reject) => {
      child.stdout.on("data", (d) => {
        out += d;
        const m = /LISTENING (\S+)\n/.exec(out);
        if (m) resolve(m[1] as string);
      });
      void exited.then(() => reject(new Error(`exited before listening: ${err}`)));
    });
    open.push(...(await peers(Number(address.slice(address.lastIndexOf(":") + 1)), home)));
    child.kill("SIGTERM");
    const code = await exited;
    return { code, out, err };
  } finally {
    clearTimeout(guard);
    child.kill("SIGKILL");
    for (const end of open) end();
    removeHome(home);
  }
}

/** A TCP connection to the kernel that never closes its side (it reads on, and answers no FIN). */
function halfOpen(port: number): Promise<net.Socket> {
  const s = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true });
  s.on("error", () => {});
  s.resume();
  return new Promise((resolve) => s.once("connect", () => resolve(s)));
}

describe("a stopped kernel holds no gRPC connection, whatever its peer does", () => {
  it("an HTTP/2 peer that keeps its side of the connection open: the kernel's process exits by itself after stop (its socket waited for the peer's FIN for ever)", async () => {
    const r = await stopWith("plain", async (port) => {
      const s = await halfOpen(port);
      // The client preface and an empty SETTINGS: an HTTP/2 connection, with no stream, ever.
      s.write(Buffer.concat([H2_PREFACE, h2Frame(4, 0, 0, Buffer.alloc(0))]));
      return [() => s.destroy()];
    });
    assert.equal(r.code, 0, `still running after stop (killed), or failed: ${r.out}${r.err}`);
    assert.match(r.out, /STOPPED/);
  });

  it("a peer that never finishes TLS: the kernel's process exits by itself after stop (the connection had no session for grpc-js to close)", async () => {
    const r = await stopWith("tls", async (port) => {
      const silent = await halfOpen(port);
      const partial = await halfOpen(port);
      partial.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00])); // a TLS record header, then nothing
      return [() => silent.destroy(), () => partial.destroy()];
    });
    assert.equal(r.code, 0, `still running after stop (killed), or failed: ${r.out}${r.err}`);
    assert.match(r.out, /STOPPED/);
  });

  it("a gRPC session whose peer stopped reading, its answers piling up, and whose channel was closed without ending the call: the kernel's process exits by itself after stop (both ends of the connection waited on each other)", async () => {
    const r = await stopWith("plain", async (port, home) => {
      const address = `127.0.0.1:${port}`;
      const identity = loadIdentity(join(home, "admin.identity"));
      const token = readFileSync(join(home, "admin.token"), "utf8").trim();
      const c = await KernelClient.connect({ grpc: { address, insecure: true }, identity, tokens: [token], reconnect: false });
      await c.storage.write("obj://stop/big", Buffer.alloc(800 * 1024, 1));
      await c.close();
      // A session by hand, as the peer that does not read its answers (grpc-transport.test.ts).
      const client = new grpc.Client(address, grpc.credentials.createInsecure());
      const call = client.makeBidiStreamRequest(
        "/kpip.v1.Kernel/Session",
        (b: Buffer) => b,
        (b: Buffer) => b,
      );
      const frames: Message[] = [];
      const decoder = new FrameDecoder(64 * 1024 * 1024);
      call.on("data", (d: Buffer) => {
        for (const f of decoder.push(d)) frames.push(decodeMessage(f));
      });
      call.on("error", () => {});
      const hello = helloFrame(identity.persona, identity.publicKey);
      call.write(hello);
      const challenge = await until(() => frames.find((m) => m.type === "CHALLENGE"), 30_000, "CHALLENGE");
      const transcript = attestationTranscript(
        Buffer.from(hello.subarray(HEADER_SIZE)),
        Buffer.from(encodeMessage(challenge).subarray(HEADER_SIZE)),
      );
      const signature = signBytes(identity.privateKey, transcript);
      call.write(encodeMessage({ type: "ATTEST", body: { signature, tokens: [Buffer.from(token, "base64url")] } }));
      await until(() => frames.find((m) => m.type === "WELCOME"), 30_000, "WELCOME");
      for (let id = 1; id <= 40; id++) {
        const intent = encodeIntent({ op: "storage.read", target: "obj://stop/big", args: {} });
        const body = { version: 1, persona: identity.persona, id, intent, context: { persona: identity.persona }, caps: [1] };
        call.write(encodeMessage({ type: "REQUEST", body }, id));
      }
      // The first answer read, the peer reads no more: the rest pile up; the channel is closed with the call open.
      await until(() => frames.find((m) => m.type === "RESPONSE"), 30_000, "the first answer");
      call.pause();
      client.close();
      return [() => call.cancel()];
    });
    assert.equal(r.code, 0, `still running after stop (killed), or failed: ${r.out}${r.err}`);
    assert.match(r.out, /STOPPED/);
  });
});
