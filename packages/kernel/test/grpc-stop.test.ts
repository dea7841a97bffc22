import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { removeHome } from "./harness.js";

const FIXTURE = fileURLToPath(new URL("../../test/fixtures/grpc-kernel.mjs", import.meta.url));

/**
 * Runs a kernel process (fixtures/grpc-kernel.mjs), opens `peers` to its gRPC address, stops it
 * (SIGTERM) and waits for it to exit by itself: its exit code and output. One still running long
 * after it stopped is killed (the kernel's own timers are ten minutes long): a failure, not a hang.
 */
async function stopWith(mode: "plain" | "tls", peers: (port: number) => Promise<net.Socket[]>) {
  const home = mkdtempSync(join(tmpdir(), "kpip-"));
  const child = spawn(process.execPath, [FIXTURE, home, mode], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stderr.on("data", (d) => {
    err += d;
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const guard = setTimeout(() => child.kill("SIGKILL"), 120_000);
  const open: net.Socket[] = [];
  try {
    const address = await new Promise<string>((resolve, reject) => {
      child.stdout.on("data", (d) => {
        out += d;
        const m = /LISTENING (\S+)\n/.exec(out);
        if (m) resolve(m[1] as string);
      });
      void exited.then(() => reject(new Error(`exited before listening: ${err}`)));
    });
    open.push(...(await peers(Number(address.slice(address.lastIndexOf(":") + 1)))));
    child.kill("SIGTERM");
    const code = await exited;
    return { code, out, err };
  } finally {
    clearTimeout(guard);
    child.kill("SIGKILL");
    for (const s of open) s.destroy();
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
      s.write(Buffer.concat([Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]));
      return [s];
    });
    assert.equal(r.code, 0, `killed, still running after stop: ${r.err}`);
    assert.match(r.out, /STOPPED/);
  });

  it("a peer that never finishes TLS: the kernel's process exits by itself after stop (the connection had no session for grpc-js to close)", async () => {
    const r = await stopWith("tls", async (port) => {
      const silent = await halfOpen(port);
      const partial = await halfOpen(port);
      partial.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00])); // a TLS record header, then nothing
      return [silent, partial];
    });
    assert.equal(r.code, 0, `killed, still running after stop: ${r.err}`);
    assert.match(r.out, /STOPPED/);
  });
});
