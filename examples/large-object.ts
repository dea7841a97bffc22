/**
 * An object larger than one frame: written from a stream through the chunked upload
 * (`storage.putLarge`), read back in ranges (`storage.readStream`), checked by its SHA-256.
 * The kernel here runs in-process with 1 MiB frames so a 20 MiB object takes many chunks.
 *
 *   npm run example:large-object
 */
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KernelClient } from "@kpip/client";
import { Kernel } from "@kpip/kernel";

const home = mkdtempSync(join(tmpdir(), "kpip-large-"));
const kernel = new Kernel({ home, logLevel: "warn", maxBodyBytes: 1024 * 1024 });
await kernel.start();
const client = await KernelClient.connect({
  socket: kernel.socketPath,
  identity: kernel.adminIdentity,
  tokens: [readFileSync(kernel.adminToken, "utf8")],
});
try {
  const size = 20 * 1024 * 1024;
  // Any (async) iterable of byte arrays will do, e.g. fs.createReadStream(path) with its size.
  async function* generate(): AsyncIterable<Uint8Array> {
    for (let off = 0; off < size; off += 256 * 1024) yield Buffer.alloc(256 * 1024, off / (256 * 1024));
  }
  const written = await client.storage.putLarge("obj://media/clip.bin", generate(), { size });
  console.log(
    `wrote ${written.size} bytes at generation ${written.generation}, sha256 ${Buffer.from(written.sha256).toString("hex")}`,
  );

  const hash = createHash("sha256");
  let read = 0;
  for await (const part of client.storage.readStream("obj://media/clip.bin")) {
    hash.update(part);
    read += part.length;
  }
  const same = hash.digest().equals(Buffer.from(written.sha256));
  console.log(`read ${read} bytes back in ranges; same SHA-256: ${same}`);
  if (!same) process.exitCode = 1;
} finally {
  await client.close();
  await kernel.stop();
  rmSync(home, { recursive: true, force: true });
}
