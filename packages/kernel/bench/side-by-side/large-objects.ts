/**
 * The large-object step of `npm run bench` (issue #22): `kpip.store64m.{uds,shm}_gbps`, 64 MiB
 * `storage.write` end to end (the body hashed, written to the file store and synced, its row
 * committed), and `kpip.bulk1g.{gbps,rss_mb}`, one object of `objectBytes` (1 GiB; 128 MiB under
 * --quick) through the chunked upload into a kernel of its own, so its RSS is what the upload
 * costs, not what earlier steps left. Returns how many requests it made (the audit fill counts them).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { type ConnectOptions, KernelClient, loadIdentity } from "@kpip/client";

export interface LargeObjectsRun {
  connect(extra?: Partial<ConnectOptions>): Promise<KernelClient>;
  put(name: string, unit: string, value: number, baseline?: string): void;
  startKernel(home: string): Promise<{ socket: string; pid: number; stop(): Promise<void> }>;
  rssMb(pid: number): number;
  home: string;
  writes: number;
  objectBytes: number;
}

export async function largeObjects(r: LargeObjectsRun): Promise<number> {
  let requests = 0;
  const data = Buffer.alloc(64 * 1024 * 1024, 0x3c);
  for (const mode of ["uds", "shm"] as const) {
    const c = await r.connect({ shm: mode === "shm" });
    if (mode === "shm" && !c.features.includes("shm")) {
      await c.close();
      continue;
    }
    let secs = 0;
    for (let i = 0; i <= r.writes; i++) {
      // New bytes every time: the store keeps one body per content, and would skip a repeat.
      data.writeUInt32BE(i, 0);
      data.write(mode, 4);
      const t = process.hrtime.bigint();
      requests += 2;
      await c.storage.write(`obj://bench/w64-${mode}`, data);
      if (i > 0) secs += Number(process.hrtime.bigint() - t) / 1e9;
    }
    // Against what the machine allows a storage.write (floors.ts: the transfer, one SHA-256 and
    // the durable write the kernel's policy requires, one after the other).
    r.put(`kpip.store64m.${mode}_gbps`, "GB/s", (data.length * r.writes) / secs / 1e9, "floor.store64m_gbps");
    await c.close();
  }
  const k = await r.startKernel(r.home);
  try {
    const c = await KernelClient.connect({
      socket: k.socket,
      identity: loadIdentity(join(r.home, "admin.identity")),
      tokens: [readFileSync(join(r.home, "admin.token"), "utf8")],
      reconnect: false,
    });
    // 8 MiB chunks, two in flight.
    const piece = Buffer.alloc(8 * 1024 * 1024, 0x5d);
    const total = r.objectBytes;
    let peak = r.rssMb(k.pid);
    const sampler = setInterval(() => {
      peak = Math.max(peak, r.rssMb(k.pid));
    }, 50);
    const t = process.hrtime.bigint();
    try {
      await c.storage.putLarge(
        "obj://bench/one-gib",
        (function* () {
          for (let off = 0; off < total; off += piece.length) yield piece;
        })(),
        { size: total, chunkBytes: piece.length },
      );
    } finally {
      clearInterval(sampler);
    }
    const secs = Number(process.hrtime.bigint() - t) / 1e9;
    r.put("kpip.bulk1g.gbps", "GB/s", total / secs / 1e9, "floor.bulk1g_gbps");
    r.put("kpip.bulk1g.rss_mb", "MB", Math.max(peak, r.rssMb(k.pid)));
    await c.close();
  } finally {
    await k.stop();
  }
  return requests;
}
