/**
 * The README's "Writing a persona" snippet, verbatim between the markers, so that it is
 * type-checked by `npm run build` and run by a test (packages/cli/test/cli.test.ts).
 * Run it from a directory holding the kernel home `.kpip` and a token minted for alice:
 *
 *   npm run --silent kpip -- token mint --persona alice --allow 'storage.*:obj://ws1/**' --ttl 1h > alice.token
 *   node examples/dist/readme-persona.js
 */
// --- README snippet ---
import { readFileSync } from "node:fs";
import { KernelClient } from "@kpip/client";

const client = await KernelClient.connect({
  socket: ".kpip/kernel.sock",
  identity: ".kpip/personas/alice.identity",
  tokens: [readFileSync("alice.token", "utf8")], // a file, not argv: other users can read a process's argv
});
try {
  await client.storage.write("obj://ws1/hello", "hi");
  const { data, generation } = await client.storage.read("obj://ws1/hello");
  console.log(`read ${JSON.stringify(Buffer.from(data).toString())} at generation ${generation}`);
} finally {
  await client.close();
}
// --- end of README snippet ---
