/**
 * `node packages/kernel/dist/bench/ab/segment-rotation.js [--mib N] [--rate N] [--rounds N]`: what a full
 * audit segment's rotation costs the kernel's thread, with the full segment synced in the
 * background first (`presync`, the kernel's default) and without (the whole unsynced tail synced
 * at rotation, as before), alternating on the same disk. Appends batches of 256 `bench.noop`-sized
 * records at `--rate` records a second (default 100,000: 256 requests in flight), through 64 MiB
 * segments, with the kernel's 1 s periodic sync beside them. One JSON line per run: rotations,
 * the appends that rotated (longest, total), and the longest append otherwise.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GENESIS_HASH } from "../../src/audit/record.js";
import type { JournalBatch, JournalRecord } from "../../src/store/audit-journal.js";
import { SegmentWriter } from "../../src/store/audit-segments.js";

const args = process.argv.slice(2);
const opt = (name: string, d: number) => {
  const at = args.indexOf(`--${name}`);
  const v = at >= 0 ? Number(args[at + 1]) : d;
  if (!Number.isSafeInteger(v) || v <= 0) {
    process.stderr.write(`--${name} must be a positive integer\n`);
    process.exit(2);
  }
  return v;
};
const MIB = opt("mib", 320);
const ROUNDS = opt("rounds", 2);
const RATE = opt("rate", 100_000);
const BATCH = 256;
/** A `bench.noop` complete record is ~330 bytes. */
const RECORD = Buffer.alloc(330, 0x61);

async function run(presync: boolean): Promise<Record<string, number | boolean>> {
  const dir = mkdtempSync(join(tmpdir(), "kpip-ab-rotation-"));
  const w = new SegmentWriter(dir, 1, { presync });
  const periodic = setInterval(() => void w.sync(), 1000);
  let seq = 1;
  let appends = 0;
  const rotationMs: number[] = [];
  let longestOther = 0;
  let segment = 1;
  const start = performance.now();
  try {
    for (let bytes = 0; bytes < MIB * 1024 * 1024; ) {
      // Paced: batch n is due at n × 256 / rate seconds.
      const due = start + (appends * BATCH * 1000) / RATE - performance.now();
      if (due > 1) await new Promise((r) => setTimeout(r, due));
      else await new Promise((r) => setImmediate(r));
      const rows: JournalRecord[] = [];
      for (let i = 0; i < BATCH; i++) rows.push({ seq: seq++, hash: GENESIS_HASH, record: RECORD });
      const batch: JournalBatch = { rows, dedupe: [], journalUpTo: 0, checkpoints: [] };
      const t = performance.now();
      const at = w.append(batch);
      const ms = performance.now() - t;
      appends++;
      bytes += at.length;
      if (at.segment !== segment) {
        rotationMs.push(ms);
        segment = at.segment;
      } else if (ms > longestOther) longestOther = ms;
    }
  } finally {
    clearInterval(periodic);
    w.close();
    rmSync(dir, { recursive: true, force: true });
  }
  const round = (x: number) => +x.toFixed(2);
  return {
    presync,
    appends,
    seconds: round((performance.now() - start) / 1000),
    rotations: rotationMs.length,
    rotationLongestMs: round(Math.max(0, ...rotationMs)),
    rotationTotalMs: round(rotationMs.reduce((a, b) => a + b, 0)),
    otherLongestMs: round(longestOther),
  };
}

for (let r = 0; r < ROUNDS; r++) {
  for (const presync of [false, true]) console.log(JSON.stringify(await run(presync)));
}
