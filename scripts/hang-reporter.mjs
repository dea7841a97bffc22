// A node:test reporter that names the tests still running in a file the runner timed out.
// The spec reporter only says the file timed out; this says where it hung.
export default async function* hangReporter(source) {
  const running = new Map(); // file -> Map(key -> { nesting, name })
  for await (const ev of source) {
    const d = ev.data;
    if (!d?.file) continue;
    const key = `${d.nesting}:${d.line}:${d.column}:${d.name}`;
    if (!running.has(d.file)) running.set(d.file, new Map());
    const open = running.get(d.file);
    if (ev.type === "test:dequeue") open.set(key, { nesting: d.nesting, name: d.name });
    else if (ev.type === "test:complete") open.delete(key);
    else if (ev.type === "test:fail" && d.nesting === 0 && d.details?.error?.failureType === "testTimeoutFailure") {
      const names = [...open.values()].filter((t) => t.nesting > 0).map((t) => "  ".repeat(t.nesting) + t.name);
      yield `\n${d.file} timed out; still running:\n${names.join("\n") || "  (no test had started)"}\n\n`;
    }
  }
}
