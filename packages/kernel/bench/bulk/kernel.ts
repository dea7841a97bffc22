/**
 * The kernel of `npm run bench:bulk`, in its own process: `node kernel.js <repo> <home>` loads
 * the kernel of the checkout at <repo> (built), so the same run can measure another branch.
 * Prints one JSON line `{ socket, pid }` when listening.
 */
const [repo, home] = process.argv.slice(2) as [string, string];
const { Kernel } = (await import(`${repo}/packages/kernel/dist/src/index.js`)) as typeof import("../../src/index.js");
const k = new Kernel({
  home,
  logLevel: "silent",
  maxBodyBytes: 80 * 1024 * 1024,
  // A checkout from before the chunked upload limits one object to a frame by default.
  maxObjectBytes: 2 * 1024 * 1024 * 1024,
});
// bench.sink: a 64 MiB request through the whole kernel path to a handler that stores nothing
// (the transfer and the pipeline without the file store), as in `npm run bench`.
k.register({
  name: "bench",
  ops: [
    {
      op: "bench.sink",
      description: "Takes a payload and answers its length.",
      targets: ["kernel"],
      args: { data: { type: "bytes", required: true, description: "the payload" } },
      idempotent: true,
      effects: false,
      // Reads only the length: the kernel may reuse a large body's memory once it answered.
      releasesArgs: true,
      handler: (ctx) => ({ status: "SUCCESS", payload: { length: (ctx.args.data as Uint8Array).length } }),
    },
  ],
});
await k.start();
process.stdout.write(`${JSON.stringify({ socket: k.socketPath, pid: process.pid })}\n`);
process.on("SIGTERM", async () => {
  await k.stop();
  process.exit(0);
});
