/**
 * `npm run bench:rows`: what one object's row takes in the home's database, besides its body —
 * the measurement OBJECT_ROW_BYTES (store/object-cost.ts) is picked from. Empty objects are
 * inserted one commit each, in random path order (as writes come), into a fresh database with the
 * kernel's schema; the file's growth after a checkpoint is divided by the rows. Twice: short
 * workspace and owner names, and the longest the grammar allows (64 bytes, 255 bytes).
 * Options: --rows N (default 4000), --json.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { OBJECT_ROW_BYTES } from "../src/store/object-cost.js";
import { openDatabase } from "../src/store/sqlite/schema.js";

const args = process.argv.slice(2);
const N = Number(args[args.indexOf("--rows") + 1] || 4000) || 4000;
const json = args.includes("--json");
const names = {
  short: { workspace: "ws1", owner: "alice" },
  longest: { workspace: "w".repeat(64), owner: Array(8).fill("o".repeat(31)).join("/") },
};
const results: { names: string; pathBytes: number; bytesPerRow: number; besidesPath: number; charged: number }[] = [];
for (const [label, { workspace, owner }] of Object.entries(names))
  for (const pathBytes of [12, 64, 200, 500, 900, 1000, 1500, 2000]) {
    const dir = mkdtempSync(join(tmpdir(), "kpip-rows-"));
    try {
      const db = openDatabase(join(dir, "kernel.db"));
      const base = db.pragma("page_count", { simple: true }) as number;
      const insert = db.prepare(
        "INSERT INTO objects (workspace, path, data, generation, size, updated_at, owner, hash) VALUES (?, ?, ?, 1, 0, ?, ?, NULL)",
      );
      for (let i = 0; i < N; i++) {
        // A random prefix (random order), the row's number (unique), padded to the length.
        const path = `${randomBytes(4).toString("hex")}${i.toString(36)}-`.padEnd(pathBytes, "x").slice(0, pathBytes);
        db.transaction(() => insert.run(workspace, path, Buffer.alloc(0), Date.now(), owner))();
      }
      db.pragma("wal_checkpoint(TRUNCATE)");
      const pages = (db.pragma("page_count", { simple: true }) as number) - base;
      const bytesPerRow = Math.round((pages * (db.pragma("page_size", { simple: true }) as number)) / N);
      db.close();
      results.push({
        names: label,
        pathBytes,
        bytesPerRow,
        besidesPath: bytesPerRow - pathBytes,
        charged: pathBytes + OBJECT_ROW_BYTES,
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
if (json) console.log(JSON.stringify(results));
else {
  console.log(`an empty object's row, ${N} rows each (charged: its path's bytes + ${OBJECT_ROW_BYTES})`);
  for (const r of results)
    console.log(
      `${r.names.padEnd(8)} path ${String(r.pathBytes).padStart(5)}: ${String(r.bytesPerRow).padStart(5)} bytes a row, ${String(r.besidesPath).padStart(5)} besides the path; charged ${r.charged}`,
    );
}
