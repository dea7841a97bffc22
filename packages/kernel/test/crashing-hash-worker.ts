import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const HASHES = new URL("../src/primitives/upload-range-hashes.js", import.meta.url).href;

/**
 * An upload hash worker that works like the kernel's, but dies (exit 7) on the first message
 * for which `dies` (a JavaScript expression over the message `m`) holds while the test has armed
 * it: the arming is used up by the death (unless `keep`: then every worker dies so until the test
 * disarms it). Every worker notes the messages it is given, with its
 * thread id, in `<dir>/trace` (which worker hashed what).
 */
export function crashingWorker(
  dir: string,
  dies: string,
  keep = false,
): { module: URL; arm(): void; disarm(): void; armed(): boolean; trace(): string[][] } {
  const armed = join(dir, "armed");
  const trace = join(dir, "trace");
  const module = join(dir, "crashing-hash-worker.mjs");
  writeFileSync(
    module,
    `import { appendFileSync, existsSync, rmSync } from "node:fs";
import { parentPort, threadId } from "node:worker_threads";
import { RangeHashes } from ${JSON.stringify(HASHES)};
const hashes = new RangeHashes();
parentPort.on("message", (m) => {
  appendFileSync(${JSON.stringify(trace)}, \`\${threadId} \${m.kind} \${m.key} \${m.offset ?? ""}\\n\`);
  if ((${dies}) && existsSync(${JSON.stringify(armed)})) {
    ${keep ? "" : `rmSync(${JSON.stringify(armed)});`}
    process.exit(7);
  }
  const r = hashes.answer(m);
  if (r) parentPort.postMessage(r);
});
`,
  );
  return {
    module: pathToFileURL(module),
    arm: () => writeFileSync(armed, ""),
    disarm: () => rmSync(armed, { force: true }),
    armed: () => existsSync(armed),
    trace: () =>
      existsSync(trace)
        ? readFileSync(trace, "utf8")
            .split("\n")
            .filter(Boolean)
            .map((l) => l.split(" "))
        : [],
  };
}
