import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import {
  closeSync,
  existsSync,
  fstatSync,
  ftruncateSync,
  openSync,
  readdirSync,
  readSync,
  statSync,
  truncateSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { crc32 } from "node:zlib";
import { KernelClient } from "@kpip/client";
import {
  encodeCanonical,
  encodeIntent,
  encodeMessage,
  FrameFlag,
  HEADER_SIZE,
  type Message,
  MessageType,
  SHM_CONTROL_BYTES,
  type ShmSegment,
  shmSegmentName,
  writeHeader,
} from "@kpip/protocol";
import { fileShm } from "@kpip/protocol/shm-files";
import { runProcess } from "@kpip/protocol/testing";
import { Kernel } from "../src/index.js";
import { SHM_LINGER_MAX, ShmBudget } from "../src/session/shm-budget.js";
import { loadShmNative } from "../src/transport/shm-native.js";
import { adminIdentity, removeHome, startKernel, type TestKernel, until } from "./harness.js";
import { attestSignature, RawPeer } from "./wire.js";

// The raw peers' own view of /dev/shm (the kernel's native holds one descriptor per name).
const native = loadShmNative().native ? fileShm("/dev/shm") : undefined;
const segments = (kernel: string) => readdirSync("/dev/shm").filter((n) => n.startsWith(`kpip.${kernel}.`));
const MAIN = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

describe("shared memory for bulk bodies (Unix socket)", () => {
  let t: TestKernel;
  before(async () => {
    assert.ok(native, `shared memory must be available here: ${loadShmNative().reason}`);
    t = await startKernel({ maxBodyBytes: 24 * 1024 * 1024, maxObjectBytes: 20 * 1024 * 1024 });
  });
  /** Segments the raw peers created: removed at the end, as a client removes its own. */
  const rawSegments: string[] = [];
  after(async () => {
    await t.stop();
    for (const n of rawSegments) native?.destroy(n);
    removeHome(t.home);
    // Bodies never taken (the shrink tests) kept their segments for a grace period: the stop removes them.
    assert.deepEqual(segments(t.k.kernelId), [], "no segment of a stopped kernel is left in /dev/shm");
  });

  it("carries 1 MiB and 16 MiB writes and reads through the segments; small bodies stay inline", async () => {
    const c = await t.admin();
    assert.deepEqual(c.features, ["shm"]);
    await c.storage.write("obj://shm/small", "x".repeat(1000));
    assert.deepEqual(c.shmFrames, { sent: 0, received: 0 }, "a 1 KB body stays inline");
    for (const size of [1024 * 1024, 16 * 1024 * 1024]) {
      const data = Buffer.alloc(size);
      for (let i = 0; i < size; i += 4) data.writeUInt32LE(i ^ 0x5a5a5a5a, i);
      const before = c.shmFrames;
      await c.storage.write(`obj://shm/b${size}`, data);
      const back = (await c.storage.read(`obj://shm/b${size}`)).data;
      assert.ok(Buffer.from(back).equals(data), `${size} bytes intact`);
      assert.equal(c.shmFrames.sent, before.sent + 1, "the write went through the segment");
      assert.equal(c.shmFrames.received, before.received + 1, "the read came back through the segment");
    }
    await c.close();
  });

  it("segments are 0600, named for the session, and removed when it ends", async () => {
    const c = await t.admin();
    await c.storage.write("obj://shm/seg", Buffer.alloc(200_000, 1));
    await c.storage.read("obj://shm/seg");
    const names = segments(t.k.kernelId);
    assert.equal(names.length, 2, names.join());
    for (const n of names) assert.equal(statSync(`/dev/shm/${n}`).mode & 0o777, 0o600, n);
    await c.close();
    await until(() => segments(t.k.kernelId).length === 0, 30_000, "segments removed");
  });

  /** A raw peer that negotiates shm and creates its own segment, as a client would. */
  async function shmPeer(): Promise<{ p: RawPeer; session: string; kernel: string; own: ShmSegment; ownName: string }> {
    const p = await RawPeer.connect(t.k.socketPath);
    const id = adminIdentity(t.k);
    const hello: Message = {
      type: "HELLO",
      body: { versions: [1], persona: "admin", publicKey: id.publicKey, instance: Buffer.alloc(16, 3), features: ["shm"] },
    };
    const hf = encodeMessage(hello);
    p.send(hf);
    const ch = await p.next("CHALLENGE");
    assert.deepEqual(ch.body.features, ["shm"]);
    const ownName = shmSegmentName(ch.body.kernel, ch.body.session, "p");
    const own = native?.create(ownName, SHM_CONTROL_BYTES + ch.body.limits.maxBody) as ShmSegment;
    rawSegments.push(ownName);
    const sig = attestSignature(id, Buffer.from(hf.subarray(HEADER_SIZE)), Buffer.from(encodeMessage(ch).subarray(HEADER_SIZE)));
    p.sendMessage({ type: "ATTEST", body: { signature: sig, tokens: [Buffer.from(t.adminToken, "base64url")] } });
    await p.next("WELCOME");
    return { p, session: ch.body.session, kernel: ch.body.kernel, own, ownName };
  }

  /** A REQUEST frame whose body sits in `seg` at `off`, sent as a descriptor with these fields. */
  function descriptorFrame(desc: Record<string, unknown>): Buffer {
    const body = encodeCanonical(desc as never);
    const f = Buffer.alloc(HEADER_SIZE + body.length);
    writeHeader(f, 0, { type: MessageType.REQUEST, flags: FrameFlag.SHM, stream: 1, length: body.length });
    f.set(body, HEADER_SIZE);
    return f;
  }

  const requestBody = () => {
    const frame = encodeMessage(
      {
        type: "REQUEST",
        body: {
          version: 1,
          persona: "admin",
          id: 1,
          intent: encodeIntent({ op: "system.health", target: "kernel://", args: {} }),
          context: { persona: "admin" },
          caps: [1],
        },
      },
      1,
    );
    return frame.subarray(HEADER_SIZE);
  };

  const expectProtocol = async (p: RawPeer, code: string) => {
    const e = await p.next("ERROR");
    assert.deepEqual([e.body.class, e.body.code, e.body.fatal], ["PROTOCOL", code, true]);
    await until(() => p.closed, 30_000, "session closed");
    const c = await t.admin();
    assert.equal((await c.system.health()).status, "ok", "the kernel keeps serving others");
    await c.close();
  };

  it("a well-formed descriptor is served: the raw peer's request runs", async () => {
    const { p, own, ownName } = await shmPeer();
    const body = requestBody();
    own.write(body, SHM_CONTROL_BYTES);
    p.send(descriptorFrame({ off: SHM_CONTROL_BYTES, len: body.length, seg: ownName, seq: 1, crc: crc32(body) }));
    assert.equal((await p.response(1)).status, "SUCCESS");
    assert.equal(own.read(0, 4).readUInt32LE(0), 1, "the kernel recorded the consumed sequence number");
    p.close();
  });

  it("a peer that shrinks its segment after first use (ftruncate) cannot fault the kernel: PROTOCOL/SHM_OUT_OF_BOUNDS", async () => {
    const { p, own, ownName } = await shmPeer();
    const body = requestBody();
    own.write(body, SHM_CONTROL_BYTES);
    p.send(descriptorFrame({ off: SHM_CONTROL_BYTES, len: body.length, seg: ownName, seq: 1, crc: crc32(body) }));
    assert.equal((await p.response(1)).status, "SUCCESS", "the segment is in use");
    // Through a mapping of the old size the next copy would raise SIGBUS and kill this process.
    truncateSync(`/dev/shm${ownName}`, 8 + SHM_CONTROL_BYTES + 10); // 8: the file's size header
    p.send(descriptorFrame({ off: SHM_CONTROL_BYTES, len: body.length, seg: ownName, seq: 2, crc: crc32(body) }));
    await expectProtocol(p, "SHM_OUT_OF_BOUNDS");
  });

  it("a peer that shrinks the kernel's own segment cannot fault it: the next body is written through the descriptor", async () => {
    const c = await t.admin();
    await c.storage.write("obj://shm/shrink", Buffer.alloc(300_000, 4));
    await c.close();
    const { p, session, kernel } = await shmPeer();
    const kName = shmSegmentName(kernel, session, "k");
    const read = (id: number) =>
      p.send(
        encodeMessage(
          {
            type: "REQUEST",
            body: {
              version: 1,
              persona: "admin",
              id,
              intent: encodeIntent({ op: "storage.read", target: "obj://shm/shrink", args: {} }),
              context: { persona: "admin" },
              caps: [1],
            },
          },
          id,
        ),
      );
    // Ids unused by the earlier raw peers (same instance id: the kernel would answer from its dedupe record).
    read(901);
    await until(() => existsSync(`/dev/shm${kName}`), 30_000, "the kernel's segment");
    // Consume the first body (control word = 1), then cut the segment down to the control word.
    const seg = native?.open(kName) as ShmSegment;
    await until(() => seg.read(SHM_CONTROL_BYTES, 1).length === 1, 30_000, "the first body written");
    seg.write(Buffer.from([1, 0, 0, 0]), 0);
    truncateSync(`/dev/shm${kName}`, 8 + 4); // the size header and the control word
    read(902);
    // Written with pwrite, the second body grows the file again instead of faulting a mapping.
    await until(() => statSync(`/dev/shm${kName}`).size > SHM_CONTROL_BYTES + 300_000, 30_000, "second body written");
    native?.detach(kName);
    const d = await t.admin();
    assert.equal((await d.system.health()).status, "ok", "the kernel lives and serves");
    await d.close();
    p.close();
  });

  it("a descriptor pointing outside its segment: PROTOCOL/SHM_OUT_OF_BOUNDS", async () => {
    const { p, ownName } = await shmPeer();
    p.send(descriptorFrame({ off: 1 << 30, len: 100, seg: ownName, seq: 1, crc: 0 }));
    await expectProtocol(p, "SHM_OUT_OF_BOUNDS");
  });

  it("hostile descriptors (past the segment's end, bad CRC-32) and an undecodable large frame take no slab from the body pool; others are served", async () => {
    // Two slabs of 2 MiB kept: two writes at once, each received into a slab, both given back.
    const c = await t.admin();
    const big = Buffer.alloc(1536 * 1024, 7);
    await Promise.all([c.storage.write("obj://shm/pool-a", big), c.storage.write("obj://shm/pool-b", big)]);
    const kept = t.k.bodyPool.keptBytes;
    assert.ok(kept >= 2 * 2 * 1024 * 1024, `slabs kept: ${kept}`);
    const len = 1536 * 1024;
    const hostile: ((own: ShmSegment, ownName: string) => Buffer)[] = [
      // The region lies past the segment's end.
      (_own, ownName) => descriptorFrame({ off: 1 << 30, len, seg: ownName, seq: 1, crc: 0 }),
      // The region's start is in the segment, its end is not.
      (_own, ownName) => descriptorFrame({ off: SHM_CONTROL_BYTES + 23 * 1024 * 1024, len, seg: ownName, seq: 1, crc: 0 }),
      // In bounds, but the bytes do not match the CRC-32: read into a slab, which must come back.
      (own, ownName) => {
        own.write(Buffer.alloc(len, 1), SHM_CONTROL_BYTES);
        return descriptorFrame({ off: SHM_CONTROL_BYTES, len, seg: ownName, seq: 1, crc: 12345 });
      },
      // Inline, not through the segment: a large frame joined into a slab that does not decode.
      () => {
        const f = Buffer.alloc(HEADER_SIZE + len, 0xff);
        writeHeader(f, 0, { type: MessageType.REQUEST, flags: 0, stream: 1, length: len });
        return f;
      },
    ];
    const codes = ["SHM_OUT_OF_BOUNDS", "SHM_OUT_OF_BOUNDS", "SHM_BAD_CHECKSUM", undefined];
    for (let round = 0; round < 3; round++) {
      for (const [i, frame] of hostile.entries()) {
        const { p, own, ownName } = await shmPeer();
        p.send(frame(own, ownName));
        const code = codes[i];
        if (code) await expectProtocol(p, code);
        else {
          assert.equal((await p.next("ERROR")).body.class, "PROTOCOL");
          await until(() => p.closed, 30_000, "session closed");
        }
        assert.equal(t.k.bodyPool.keptBytes, kept, `round ${round}, descriptor ${i}: the pool keeps its slabs`);
      }
    }
    // An honest large write is still received into a kept slab (reused, none made).
    const before = t.k.bodyPool;
    await c.storage.write("obj://shm/pool-c", big);
    assert.equal(t.k.bodyPool.made, before.made, "no new slab needed");
    assert.equal(t.k.bodyPool.reused, before.reused + 1);
    assert.equal(t.k.bodyPool.keptBytes, kept);
    await c.close();
  });

  it("an ATTEST through the segment over the handshake's bound: PROTOCOL/SHM_TOO_LARGE, nothing copied out before WELCOME", async () => {
    const p = await RawPeer.connect(t.k.socketPath);
    const id = adminIdentity(t.k);
    p.sendMessage({
      type: "HELLO",
      body: { versions: [1], persona: "admin", publicKey: id.publicKey, instance: Buffer.alloc(16, 4), features: ["shm"] },
    });
    const ch = await p.next("CHALLENGE");
    assert.ok(ch.body.limits.maxBody > 2 * 1024 * 1024, "the session's maxBody is above the ATTEST bound");
    const ownName = shmSegmentName(ch.body.kernel, ch.body.session, "p");
    const own = native?.create(ownName, SHM_CONTROL_BYTES + ch.body.limits.maxBody) as ShmSegment;
    rawSegments.push(ownName);
    // Any peer could do this before authenticating: the kernel copied and checksummed the
    // negotiated maxBody (16 MiB) for it before it looked at the signature.
    const len = 2 * 1024 * 1024;
    own.write(Buffer.alloc(len, 7), SHM_CONTROL_BYTES);
    const body = encodeCanonical({ off: SHM_CONTROL_BYTES, len, seg: ownName, seq: 1, crc: 0 });
    const f = Buffer.alloc(HEADER_SIZE + body.length);
    writeHeader(f, 0, { type: MessageType.ATTEST, flags: FrameFlag.SHM, stream: 0, length: body.length });
    f.set(body, HEADER_SIZE);
    const pool = t.k.bodyPool.made;
    p.send(f);
    await expectProtocol(p, "SHM_TOO_LARGE");
    assert.equal(t.k.bodyPool.made, pool, "no body memory taken for it");
  });

  it("a descriptor reaching into the control bytes: PROTOCOL/SHM_OUT_OF_BOUNDS", async () => {
    const { p, ownName } = await shmPeer();
    p.send(descriptorFrame({ off: 0, len: 100, seg: ownName, seq: 1, crc: 0 }));
    await expectProtocol(p, "SHM_OUT_OF_BOUNDS");
  });

  it("a descriptor naming another session's segment: PROTOCOL/SHM_FOREIGN_SEGMENT, nothing read from it", async () => {
    const victim = await t.admin();
    await victim.storage.write("obj://shm/victim", Buffer.alloc(300_000, 9));
    const victimSeg = segments(t.k.kernelId).find((n) => n.endsWith(".p")) as string;
    const { p } = await shmPeer();
    p.send(descriptorFrame({ off: SHM_CONTROL_BYTES, len: 300_000, seg: `/${victimSeg}`, seq: 1, crc: 0 }));
    await expectProtocol(p, "SHM_FOREIGN_SEGMENT");
    assert.equal((await victim.system.health()).status, "ok");
    await victim.close();
  });

  it("a body that does not match its CRC-32: PROTOCOL/SHM_BAD_CHECKSUM", async () => {
    const { p, own, ownName } = await shmPeer();
    const body = requestBody();
    own.write(body, SHM_CONTROL_BYTES);
    p.send(descriptorFrame({ off: SHM_CONTROL_BYTES, len: body.length, seg: ownName, seq: 1, crc: (crc32(body) + 1) >>> 0 }));
    await expectProtocol(p, "SHM_BAD_CHECKSUM");
  });

  it("a replayed or skipped sequence number: PROTOCOL/SHM_BAD_SEQUENCE", async () => {
    const { p, own, ownName } = await shmPeer();
    const body = requestBody();
    own.write(body, SHM_CONTROL_BYTES);
    p.send(descriptorFrame({ off: SHM_CONTROL_BYTES, len: body.length, seg: ownName, seq: 7, crc: crc32(body) }));
    await expectProtocol(p, "SHM_BAD_SEQUENCE");
  });

  it("a malformed descriptor, and a descriptor on a session without shm: PROTOCOL", async () => {
    const { p } = await shmPeer();
    p.send(descriptorFrame({ off: "x", len: 1, seg: "y", seq: 1, crc: 0 }));
    await expectProtocol(p, "SHM_BAD_DESCRIPTOR");
    const q = await RawPeer.admin(t);
    q.send(descriptorFrame({ off: SHM_CONTROL_BYTES, len: 1, seg: "/x", seq: 1, crc: 0 }));
    await expectProtocol(q, "SHM_NOT_NEGOTIATED");
  });

  it("clients that do not want it, gRPC sessions and shmThreshold 0 never negotiate shm", async () => {
    const c = await t.admin({ shm: false });
    assert.deepEqual(c.features, []);
    await c.storage.write("obj://shm/inline", Buffer.alloc(500_000, 2));
    assert.deepEqual(c.shmFrames, { sent: 0, received: 0 });
    await c.close();
    const t2 = await startKernel({ shmThreshold: 0, grpcListen: "127.0.0.1:0" });
    const d = await t2.admin();
    assert.deepEqual(d.features, [], "shmThreshold 0: off");
    await d.close();
    const g = await KernelClient.connect({
      grpc: { address: t2.k.grpcAddress as string, insecure: true },
      identity: adminIdentity(t2.k),
      tokens: [t2.adminToken],
      reconnect: false,
    });
    assert.deepEqual(g.features, [], "never over gRPC");
    await g.close();
    await t2.stop();
    removeHome(t2.home);
  });

  it("sweeps a crashed kernel's leftover segments at start", async () => {
    const t3 = await startKernel();
    const id = t3.k.kernelId;
    await t3.stop();
    const stale = shmSegmentName(id, "00000000-dead-dead-dead-000000000000", "k");
    native?.create(stale, 4096);
    native?.detach(stale);
    assert.ok(existsSync(`/dev/shm${stale}`));
    const k = new Kernel({ home: t3.home, logLevel: "silent" });
    await k.start();
    assert.ok(!existsSync(`/dev/shm${stale}`), "swept");
    await k.stop();
    removeHome(t3.home);
  });

  it("a client process that exits without closing (or within a segment's grace period) leaves no segment of its own", async () => {
    const CLIENT = fileURLToPath(new URL("../../../client/dist/src/index.js", import.meta.url));
    const script = `
      const { KernelClient } = await import(${JSON.stringify(CLIENT)});
      const { readFileSync } = await import("node:fs");
      const c = await KernelClient.connect({ socket: process.argv[1], identity: process.argv[2], tokens: [readFileSync(process.argv[3], "utf8")], reconnect: false });
      await c.storage.write("obj://shm/exit", Buffer.alloc(1024 * 1024, 9));
      process.stdout.write(c.features.join(",") + " " + c.sessionId + "\\n");
      process.exit(0); // no close
    `;
    const child = spawn(
      process.execPath,
      ["--input-type=module", "-e", script, t.k.socketPath, join(t.home, "admin.identity"), join(t.home, "admin.token")],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    const code = await new Promise((r) => child.once("exit", r));
    assert.equal(code, 0);
    const [features, session] = out.trim().split(" ");
    assert.equal(features, "shm", "the child's session used shared memory");
    assert.deepEqual(
      segments(t.k.kernelId).filter((n) => n.includes(`${session}.p`)),
      [],
      "the client's own segment was removed when its process exited",
    );
  });

  it("a client that reads an answer after the kernel emptied its segment loses that session, not its process (no SIGBUS)", async () => {
    // The kernel empties its segment when the grace period of a session's last body ends; a
    // client whose event loop was held that long (or a faulty kernel) reads it afterwards.
    let emptied: Promise<void> | undefined;
    const r = await runProcess(
      process.execPath,
      [
        fileURLToPath(new URL("../../test/fixtures/shm-late-reader.mjs", import.meta.url)),
        t.k.socketPath,
        join(t.home, "admin.identity"),
        join(t.home, "admin.token"),
      ],
      {
        onLine: (line) => {
          if (!line.startsWith("SEGMENT ")) return;
          const seg = line.slice("SEGMENT ".length);
          // The kernel runs on this thread: once the second body (bytes 0x22) is seen in its
          // segment, the whole answer is there. Then the segment is emptied as the kernel's end of a session does.
          emptied = until(
            () => {
              const probe = Buffer.alloc(1);
              const fd = openSync(seg, "r+");
              try {
                readSync(fd, probe, 0, 1, 8 + SHM_CONTROL_BYTES + 512 * 1024);
                if (probe[0] !== 0x22) return false;
                ftruncateSync(fd, 0);
                return true;
              } finally {
                closeSync(fd);
              }
            },
            30_000,
            "the second answer in the kernel's segment",
          ).then(() => {});
        },
      },
    );
    await emptied;
    assert.equal(r.code, 0, `the client process survived the shrunk segment: ${r.err}`);
    const late = JSON.parse(r.out.trim().split("\n").at(-1) as string) as { error: string; code: string };
    assert.equal(late.error, "ProtocolViolationError", r.out);
    assert.match(r.out, /SHM_OUT_OF_BOUNDS|outside its segment/, "the read failed as a short read of the segment");
  });

  it("without shared memory (KPIP_SHM=off) everything works inline, and the kernel says so once", async () => {
    const home = join(t.home, "no-shm");
    const child = spawn(process.execPath, [MAIN, "kernel", "--home", home, "--log-level", "warn"], {
      env: { ...process.env, KPIP_SHM: "off" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    child.stderr.on("data", (d) => {
      out += d;
    });
    await until(() => out.includes("is running"), 10_000, "kernel started");
    const { readFileSync } = await import("node:fs");
    const c = await KernelClient.connect({
      socket: join(home, "kernel.sock"),
      identity: join(home, "admin.identity"),
      tokens: [readFileSync(join(home, "admin.token"), "utf8")],
      reconnect: false,
    });
    assert.deepEqual(c.features, []);
    const data = Buffer.alloc(2 * 1024 * 1024, 4);
    await c.storage.write("obj://shm/off", data);
    assert.ok(Buffer.from((await c.storage.read("obj://shm/off")).data).equals(data));
    await c.close();
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
    assert.equal(out.split("shared memory unavailable").length - 1, 1, out);
  });
});

describe("the memory the kernel's segments hold is bounded (maxShmBytesPerPersona, maxShmBytes)", () => {
  const KIB = 1024;
  let t: TestKernel;
  before(async () => {
    assert.ok(native, `shared memory must be available here: ${loadShmNative().reason}`);
    // Room for one 600 KiB answer per tree and two in all.
    t = await startKernel({ maxShmBytesPerPersona: 1024 * KIB, maxShmBytes: 1536 * KIB });
  });
  after(async () => {
    await t.stop();
    removeHome(t.home);
  });

  const body = Buffer.alloc(600 * KIB, 7);
  /** Reads the 600 KiB object: true if its answer came through the kernel's segment. */
  async function readThroughShm(c: KernelClient): Promise<boolean> {
    const before = c.shmFrames.received;
    const back = (await c.storage.read("obj://held/big")).data;
    assert.ok(Buffer.from(back).equals(body), "the answer is intact, whichever way it came");
    return c.shmFrames.received === before + 1;
  }

  it("past a tree's or the kernel's bound a large answer goes inline; a segment's bytes come back when it is removed, emptied", async () => {
    const admin = await t.admin({ shm: false });
    await admin.storage.write("obj://held/big", body);
    const rights = [{ ops: ["storage.read"], targets: ["obj://held/**"] }];
    const one = await t.persona("holder-one", rights);
    const two = await t.persona("holder-two", rights);
    const three = await t.persona("holder-three", rights);

    const a1 = await t.connect(one.identity, [one.token]);
    assert.equal(await readThroughShm(a1), true, "the first answer of a tree goes through the segment");
    const held = t.k.sharedMemoryBytes;
    assert.ok(held >= body.length && held < body.length + 4 * KIB, `the segment holds its body (${held})`);
    assert.equal(await readThroughShm(a1), true, "the same segment carries the next one: nothing more held");
    assert.equal(t.k.sharedMemoryBytes, held);

    const a2 = await t.connect(one.identity, [one.token]);
    assert.equal(await readThroughShm(a2), false, "a second session of the tree would hold 1.2 MiB: inline");
    assert.equal(t.k.sharedMemoryBytes, held);

    const b1 = await t.connect(two.identity, [two.token]);
    assert.equal(await readThroughShm(b1), true, "another tree has its own room");
    const c1 = await t.connect(three.identity, [three.token]);
    assert.equal(await readThroughShm(c1), false, "a third tree's empty room, but the kernel's is full: inline");
    assert.equal(t.k.sharedMemoryBytes, 2 * held);

    // A peer that keeps the kernel's segment open past its session cannot keep its pages.
    const name = shmSegmentName(t.k.kernelId, a1.sessionId, "k").replace(/^\//, "");
    const kept = openSync(`/dev/shm/${name}`, "r");
    try {
      assert.ok(fstatSync(kept).size > body.length);
      await a1.close();
      await until(() => t.k.sharedMemoryBytes === held, 30_000, "the closed session's segment given back");
      assert.equal(fstatSync(kept).size, 0, "the segment was emptied before it was removed");
    } finally {
      closeSync(kept);
    }
    assert.equal(await readThroughShm(a2), true, "the tree's room is back: its other session's answer goes through its segment");
  });
});

describe("segments kept past their session are bounded (each holds a descriptor no session counts)", () => {
  it("at most SHM_LINGER_MAX segments are kept for their grace; the next is removed at once, and a removed one makes room", () => {
    const budget = new ShmBudget({ total: 1024 * 1024, perTree: 1024 * 1024 });
    const owners = Array.from({ length: SHM_LINGER_MAX + 1 }, () => ({}));
    for (const o of owners.slice(0, SHM_LINGER_MAX)) assert.equal(budget.linger(o), true);
    assert.equal(budget.linger(owners[SHM_LINGER_MAX] as object), false, "one more would hold a descriptor past the count");
    assert.equal(budget.lingeringCount, SHM_LINGER_MAX);
    budget.release(owners[0] as object);
    assert.equal(budget.linger(owners[SHM_LINGER_MAX] as object), true, "a segment removed after its grace makes room");
  });
});
