/**
 * The kpip side of `npm run bench`: a kernel in its own process with a bench primitive family
 * registered through the embedder API, so the measured path is the whole kernel path (codec,
 * handle check, audit, router, response) around a handler that does no I/O.
 * Prints one JSON line `{ "ready": true, socket, home, grpc? }` on stdout when listening.
 */
import { Kernel, type KernelOptions, OpError, type PrimitiveFamily } from "../../src/index.js";

const argv = process.argv.slice(2);
const opt = (name: string) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
};

const bench: PrimitiveFamily = {
  name: "bench",
  ops: [
    {
      op: "bench.noop",
      description: "Does nothing: the cost measured is the kernel's.",
      targets: ["kernel"],
      args: { data: { type: "bytes", description: "ignored payload" } },
      idempotent: true,
      effects: false,
      handler: () => ({ status: "SUCCESS", payload: { ok: true } }),
    },
    {
      op: "bench.sink",
      description: "Takes a payload and answers its length (bulk transfer, persona → kernel).",
      targets: ["kernel"],
      args: { data: { type: "bytes", required: true, description: "the payload" } },
      idempotent: true,
      effects: false,
      // Reads only the length: the kernel may reuse a large body's memory once it answered.
      releasesArgs: true,
      handler: (ctx) => ({ status: "SUCCESS", payload: { length: (ctx.args.data as Uint8Array).length } }),
    },
    {
      op: "bench.source",
      description: "Answers a payload of the requested length (bulk transfer, kernel → persona).",
      targets: ["kernel"],
      args: { length: { type: "uint", required: true, description: "bytes to send" } },
      idempotent: true,
      effects: false,
      handler: (ctx) => {
        const n = ctx.args.length as number;
        if (n > 128 * 1024 * 1024) throw new OpError("RESOURCE", "at most 128 MiB");
        return { status: "SUCCESS", payload: { data: Buffer.alloc(n, 0x5a) } };
      },
    },
  ],
};

const options: KernelOptions = {
  home: opt("home") as string,
  logLevel: "silent",
  maxBodyBytes: 80 * 1024 * 1024,
  maxSessions: Number(opt("max-sessions") ?? 2048),
  maxInFlight: 1024,
};
const grpc = opt("grpc-listen");
if (grpc) (options as Record<string, unknown>).grpcListen = grpc;
const handshake = opt("handshake-timeout-ms");
if (handshake) (options as Record<string, unknown>).handshakeTimeoutMs = Number(handshake);
const shm = opt("shm");
if (shm === "off") (options as Record<string, unknown>).shm = false;
const kernel = new Kernel(options);
kernel.register(bench);
await kernel.start();
const k = kernel as unknown as { grpcAddress?: string };
process.stdout.write(
  `${JSON.stringify({ ready: true, socket: kernel.socketPath, home: options.home, grpc: k.grpcAddress, pid: process.pid })}\n`,
);
const stop = async () => {
  await kernel.stop();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
