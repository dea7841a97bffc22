/**
 * A persona that reaches the kernel over gRPC when the Unix socket is not there: the kernel
 * (embedded here) listens on loopback gRPC as well as its socket; the client is given a socket
 * path that does not exist and falls back. Over the socket, large bodies would go through
 * shared memory; over gRPC they never do.
 *
 *   npm run example:grpc
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KernelClient } from "@kpip/client";
import { Kernel } from "@kpip/kernel";

const home = mkdtempSync(join(tmpdir(), "kpip-grpc-example-"));
// Plaintext is allowed on loopback only; anywhere else give --grpc-tls-cert/--grpc-tls-key.
const kernel = new Kernel({ home, logLevel: "error", grpcListen: "127.0.0.1:0" });
await kernel.start();
console.log("kernel listening on", kernel.socketPath, "and gRPC", kernel.grpcAddress);

const client = await KernelClient.connect({
  socket: join(home, "not-here.sock"),
  grpc: { address: kernel.grpcAddress as string, insecure: true },
  identity: kernel.adminIdentity,
  tokens: [readFileSync(kernel.adminToken, "utf8")],
});
console.log("connected over:", client.transport, "features:", client.features);
await client.storage.write("obj://example/hello", "over gRPC");
console.log("read back:", Buffer.from((await client.storage.read("obj://example/hello")).data).toString());

// The same persona over the socket negotiates shared memory for bodies over 64 KiB.
const local = await KernelClient.connect({
  socket: kernel.socketPath,
  identity: kernel.adminIdentity,
  tokens: [readFileSync(kernel.adminToken, "utf8")],
});
await local.storage.write("obj://example/big", Buffer.alloc(1024 * 1024, 1));
console.log("over the socket:", local.transport, "features:", local.features, "shm frames:", local.shmFrames);

await local.close();
await client.close();
await kernel.stop();
rmSync(home, { recursive: true, force: true });
