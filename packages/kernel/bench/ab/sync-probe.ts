/**
 * A preload for a bench kernel (`--import`, through NODE_OPTIONS): times every `fdatasyncSync`
 * the kernel's main thread makes (its WAL syncs; SQLite's own fsyncs are not seen) and, at exit,
 * writes `{ syncs, ms, maxMs }` to `$KPIP_SYNC_PROBE_OUT` — what the file-release A/B reports
 * as the time the kernel's one thread spent waiting for the disk in node's syncs.
 */
import fs from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { isMainThread } from "node:worker_threads";

const out = process.env.KPIP_SYNC_PROBE_OUT;
if (isMainThread && out) {
  const real = fs.fdatasyncSync;
  const seen = { syncs: 0, ms: 0, maxMs: 0 };
  fs.fdatasyncSync = (fd: number) => {
    const t = process.hrtime.bigint();
    try {
      real(fd);
    } finally {
      const ms = Number(process.hrtime.bigint() - t) / 1e6;
      seen.syncs++;
      seen.ms += ms;
      seen.maxMs = Math.max(seen.maxMs, ms);
    }
  };
  syncBuiltinESMExports();
  process.on("exit", () => fs.writeFileSync(out, JSON.stringify(seen)));
}
