// A node:test reporter that ends a run with the slowest test files, so a CI log says where its time went.
// Node 20 reports each file as a top-level test named by its path (its duration is the file's process);
// later versions may not, so a file's wall span (its first event to its last) stands in.
import { relative } from "node:path";

const TOP = 15;

export default async function* timingReporter(source) {
  const files = new Map(); // file -> { first, last, duration }
  const started = performance.now();
  for await (const ev of source) {
    const d = ev.data;
    if (!d?.file) continue;
    const now = performance.now();
    const f = files.get(d.file) ?? { first: now, last: now, duration: undefined };
    files.set(d.file, f);
    f.last = now;
    if (ev.type === "test:complete" && d.nesting === 0 && d.name === d.file) f.duration = d.details?.duration_ms;
  }
  const wall = (performance.now() - started) / 1000;
  const rows = [...files].map(([file, f]) => ({
    file: relative(process.cwd(), file),
    s: (f.duration ?? f.last - f.first) / 1000,
  }));
  rows.sort((a, b) => b.s - a.s);
  const sum = rows.reduce((t, r) => t + r.s, 0);
  const width = Math.max(0, ...rows.slice(0, TOP).map((r) => r.file.length));
  yield `\nslowest test files (of ${rows.length}; ${sum.toFixed(0)} s in files, ${wall.toFixed(0)} s wall):\n`;
  for (const r of rows.slice(0, TOP)) yield `  ${r.file.padEnd(width)}  ${r.s.toFixed(1).padStart(6)} s\n`;
}
