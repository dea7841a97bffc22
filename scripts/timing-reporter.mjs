// Ends a run with the slowest test files, so a CI log says where its time went. A watcher of the
// run's events (scripts/run-reporter.mjs).
// Node 20 reports each file as a top-level test named by its path (its duration is the file's process);
// later versions may not, so a file's wall span (its first event to its last) stands in. Beside each
// file, the time in its tests: a process that outlives its tests by much has a timer or handle left
// open (a poll of a dead connection kept one file alive a minute after its tests).
import { relative } from "node:path";

const TOP = 15;
/** Seconds outside its tests (start-up, loading, file-level hooks, what keeps it alive after) worth naming. */
const OUTSIDE = 10;

export function timingWatch() {
  const files = new Map(); // file -> { first, last, duration, inTests }
  const started = performance.now();
  return {
    /** One event of the run. */
    event(ev) {
      const d = ev.data;
      if (!d?.file) return;
      const now = performance.now();
      const f = files.get(d.file) ?? { first: now, last: now, duration: undefined, inTests: 0 };
      files.set(d.file, f);
      f.last = now;
      if (ev.type !== "test:complete" || d.nesting !== 0) return;
      if (d.name === d.file) f.duration = d.details?.duration_ms;
      else f.inTests += d.details?.duration_ms ?? 0;
    },
    /** The table, once the run has ended. */
    end: () => table(files, started),
  };
}

function table(files, started) {
  let out = "";
  const wall = (performance.now() - started) / 1000;
  const rows = [...files].map(([file, f]) => ({
    file: relative(process.cwd(), file),
    s: (f.duration ?? f.last - f.first) / 1000,
    inTests: f.inTests / 1000,
  }));
  rows.sort((a, b) => b.s - a.s);
  const sum = rows.reduce((t, r) => t + r.s, 0);
  const line = (r, width) =>
    `  ${r.file.padEnd(width)}  ${r.s.toFixed(1).padStart(6)} s  (${r.inTests.toFixed(1)} s in its tests)\n`;
  const top = rows.slice(0, TOP);
  out += `\nslowest test files (of ${rows.length}; ${sum.toFixed(0)} s in files, ${wall.toFixed(0)} s wall):\n`;
  for (const r of top) out += line(r, Math.max(0, ...top.map((x) => x.file.length)));
  const idle = rows.filter((r) => r.s - r.inTests > OUTSIDE);
  if (idle.length === 0) return out;
  out += `files that spent over ${OUTSIDE} s outside their tests (a timer or handle left open?):\n`;
  for (const r of idle) out += line(r, Math.max(0, ...idle.map((x) => x.file.length)));
  return out;
}
