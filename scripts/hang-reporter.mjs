// Names the tests still running in a file the runner timed out: the spec reporter only says the
// file timed out; this says where it hung. A watcher of the run's events (scripts/run-reporter.mjs).
export function hangWatch() {
  const running = new Map(); // file -> Map(key -> { nesting, name })
  /** One event of the run; a note to print when it is a file's timeout. */
  return (ev) => {
    const d = ev.data;
    if (!d?.file) return undefined;
    const key = `${d.nesting}:${d.line}:${d.column}:${d.name}`;
    if (!running.has(d.file)) running.set(d.file, new Map());
    const open = running.get(d.file);
    if (ev.type === "test:dequeue") open.set(key, { nesting: d.nesting, name: d.name });
    else if (ev.type === "test:complete") open.delete(key);
    else if (ev.type === "test:fail" && d.nesting === 0 && d.details?.error?.failureType === "testTimeoutFailure") {
      const names = [...open.values()].filter((t) => t.nesting > 0).map((t) => "  ".repeat(t.nesting) + t.name);
      return `\n${d.file} timed out; still running:\n${names.join("\n") || "  (no test had started)"}\n\n`;
    }
    return undefined;
  };
}
