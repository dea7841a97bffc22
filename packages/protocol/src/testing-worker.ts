/**
 * The worker thread of {@link CommandWorker} (testing.ts): runs the `dispatch(argv)` of the module
 * it is given, one command line after another, and answers each with its exit code and what it
 * wrote. Its own stdout and stderr are replaced by the collectors: nothing reaches the parent's.
 */
import { parentPort, workerData } from "node:worker_threads";

const port = parentPort;
if (!port) throw new Error("testing-worker.js runs as a worker thread");

type Dispatch = (argv: string[]) => Promise<number>;
const loaded = import(workerData.module as string).then((m) => m.dispatch as Dispatch);

let out = "";
let err = "";
type Write = typeof process.stdout.write;
const collect = (into: (s: string) => void): Write =>
  ((chunk: string | Uint8Array, enc?: BufferEncoding | ((e?: Error | null) => void), cb?: (e?: Error | null) => void) => {
    into(typeof chunk === "string" ? chunk : Buffer.from(chunk).toString(typeof enc === "string" ? enc : "utf8"));
    const done = typeof enc === "function" ? enc : cb;
    if (done) queueMicrotask(() => done());
    return true;
  }) as Write;
process.stdout.write = collect((s) => {
  out += s;
});
process.stderr.write = collect((s) => {
  err += s;
});

// One at a time: two command lines' output would otherwise interleave in the collectors.
let queue = Promise.resolve();
port.on("message", (m: { id: number; argv: string[] }) => {
  queue = queue.then(async () => {
    out = "";
    err = "";
    let code: number;
    try {
      code = await (await loaded)(m.argv);
    } catch (e) {
      // What the process entry (the CLI's exit.ts) makes of a throw: exit 1, said on stderr.
      err += `kpip: internal error: ${(e as Error)?.stack ?? e}\n`;
      code = 1;
    }
    port.postMessage({ id: m.id, code, out, err });
  });
});
