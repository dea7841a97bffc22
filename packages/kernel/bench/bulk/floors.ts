/**
 * The floors of bulk data on this machine (issue #22): what moving, hashing and durably storing
 * 64 MiB costs with nothing of kpip in the way, measured in the same run as kpip so the ratio
 * says how close kpip is to what the machine allows (as the raw echo does for latency).
 *
 *   floor.sha256_gbps          SHA-256 of 64 MiB in one call (every stored body is hashed)
 *   floor.memcpy_gbps          one copy of 64 MiB in memory
 *   floor.crc32_gbps           CRC-32 of 64 MiB (the shared-memory path checks one per body)
 *   floor.uds_gbps             64 MiB through a Unix socket to another Node process
 *   floor.shm_read_gbps        64 MiB read out of a /dev/shm file (the kernel's copy of a segment)
 *   floor.file_gbps            64 MiB written to a new file in the home's file system, no sync
 *   floor.file_fdatasync_gbps  the same, then fdatasync
 *   floor.durable_gbps         what the kernel's policy requires of a stored body: written,
 *                              fsync'd, renamed to its address, its directory fsync'd
 *   floor.store64m_gbps        the three a 64 MiB storage.write cannot avoid, one after the other:
 *                              the socket transfer, one SHA-256 and the durable write (work that
 *                              overlaps can beat it; nothing serial can)
 *   floor.bulk1g_gbps          (bulk1gFloor) the hashing the chunked upload requires, on every core
 *
 * Each is the median of `runs` runs.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  closeSync,
  constants,
  fdatasyncSync,
  fsyncSync,
  mkdtempSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import net from "node:net";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { crc32 } from "node:zlib";

export const FLOOR_BYTES = 64 * 1024 * 1024;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const secs = (t: bigint) => Number(process.hrtime.bigint() - t) / 1e9;

async function timed(runs: number, f: () => void | Promise<void>): Promise<number> {
  await f(); // warm-up
  const xs: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t = process.hrtime.bigint();
    await f();
    xs.push(secs(t));
  }
  return median(xs);
}

function writeAll(fd: number, data: Uint8Array): void {
  let off = 0;
  while (off < data.length) off += writeSync(fd, data, off, data.length - off);
}

/** Seconds per 64 MiB for each floor; `dir` is in the file system measured (the kernel's home's). */
export async function measureFloors(dir: string, runs = 5): Promise<Record<string, number>> {
  const data = Buffer.alloc(FLOOR_BYTES, 0x3c);
  const out: Record<string, number> = {};
  out.sha256 = await timed(runs, () => {
    createHash("sha256").update(data).digest();
  });
  const into = Buffer.allocUnsafe(FLOOR_BYTES);
  out.memcpy = await timed(runs, () => {
    data.copy(into);
  });
  out.crc32 = await timed(runs, () => {
    crc32(data);
  });
  const work = mkdtempSync(join(dir, "floors-"));
  try {
    let n = 0;
    const file = (sync: "none" | "data" | "durable") => () => {
      const path = join(work, `f${n++}`);
      const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
      writeAll(fd, data);
      if (sync === "data") fdatasyncSync(fd);
      if (sync === "durable") fsyncSync(fd);
      closeSync(fd);
      if (sync === "durable") {
        const dest = join(work, `d${n}`);
        renameSync(path, dest);
        const dfd = openSync(work, constants.O_RDONLY | constants.O_DIRECTORY);
        fsyncSync(dfd);
        closeSync(dfd);
        unlinkSync(dest);
      } else unlinkSync(path);
    };
    out.file = await timed(runs, file("none"));
    out.file_fdatasync = await timed(runs, file("data"));
    out.durable = await timed(runs, file("durable"));
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const shmPath = `/dev/shm/kpip-floor-${process.pid}`;
  try {
    const fd = openSync(shmPath, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o600);
    try {
      writeAll(fd, data);
      out.shm_read = await timed(runs, () => {
        let got = 0;
        while (got < FLOOR_BYTES) got += readSync(fd, into, got, FLOOR_BYTES - got, got);
      });
    } finally {
      closeSync(fd);
      unlinkSync(shmPath);
    }
  } catch {
    // no /dev/shm here: no shared-memory floor
  }
  out.uds = await udsFloor(dir, data, runs);
  out.store64m = out.uds + out.sha256 + out.durable;
  return out;
}

/** 64 MiB written to a Unix socket, until the other process says it has read them all. */
async function udsFloor(dir: string, data: Buffer, runs: number): Promise<number> {
  const path = join(mkdtempSync(join(dir, "floor-uds-")), "s");
  const sink = spawn(process.execPath, [fileURLToPath(new URL("floor-sink.js", import.meta.url)), path, String(data.length)], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  try {
    await new Promise<void>((ok, fail) => {
      sink.stdout.once("data", () => ok());
      sink.once("exit", (c) => fail(new Error(`floor sink exited with ${c}`)));
    });
    const sock = net.connect(path);
    await new Promise((ok) => sock.once("connect", ok));
    let acks = 0;
    let wake: (() => void) | undefined;
    sock.on("data", (d) => {
      acks += d.length;
      wake?.();
    });
    const s = await timed(runs, async () => {
      const want = acks + 1;
      sock.write(data);
      while (acks < want) await new Promise<void>((r) => (wake = r));
    });
    sock.destroy();
    return s;
  } finally {
    sink.kill("SIGTERM");
    rmSync(join(path, ".."), { recursive: true, force: true });
  }
}

/**
 * `floor.bulk1g_gbps`: the fastest one object can go through the chunked upload on this machine.
 * The protocol has every byte hashed three times — by the client (the commit names the object's
 * SHA-256), by the kernel as part of each chunk's intent (the intent hash covers its exact bytes)
 * and by the kernel into the object's SHA-256, which it must check itself — so even spread
 * perfectly over every core, the hashing alone takes 3 × SHA-256 / cores.
 */
export function bulk1gFloor(s: Record<string, number>, cores = availableParallelism()): number {
  return FLOOR_BYTES / ((3 * (s.sha256 as number)) / cores) / 1e9;
}

/** The floors as `floor.<name>_gbps` figures. */
export function floorFigures(s: Record<string, number>): [string, number][] {
  return Object.entries(s).map(([k, v]) => [`floor.${k}_gbps`, FLOOR_BYTES / v / 1e9]);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const dir = process.argv[2] ?? process.env.HOME ?? "/tmp";
  const s = await measureFloors(dir);
  for (const [name, gbps] of [...floorFigures(s), ["floor.bulk1g_gbps", bulk1gFloor(s)] as const])
    console.log(`${name.padEnd(28)} ${gbps.toFixed(3)} GB/s`);
}
