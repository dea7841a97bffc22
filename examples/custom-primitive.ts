/**
 * Embedding the kernel and adding a primitive family of your own, declared like the
 * built-ins: it appears in system.describe, is authorized by capabilities and audited by
 * the pipeline — the handler does neither itself.
 *
 *   npm run example:embed
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KernelClient, type KpipError } from "@kpip/client";
import { Kernel, OpError, type PrimitiveFamily, SqliteStore } from "@kpip/kernel";
import { generateIdentity } from "@kpip/protocol";

// A stand-in for e.g. llm.generate: the kernel stays neutral, the family owns the mechanism.
const textFamily: PrimitiveFamily = {
  name: "text",
  ops: [
    {
      op: "text.reverse",
      description: "Reverse a string (an example embedder primitive).",
      targets: ["kernel"],
      args: { text: { type: "text", required: true, description: "the string to reverse" } },
      idempotent: true,
      effects: false,
      handler: (ctx) => {
        const text = ctx.args.text as string;
        if (text.length > 10_000) throw new OpError("RESOURCE", "text longer than 10,000 characters");
        return { status: "SUCCESS", payload: { reversed: [...text].reverse().join("") } };
      },
    },
  ],
};

const home = mkdtempSync(join(tmpdir(), "kpip-embed-"));
const kernel = new Kernel({ home, logLevel: "warn" });
kernel.register(textFamily);
await kernel.start();

const admin = await KernelClient.connect({
  socket: kernel.socketPath,
  identity: kernel.adminIdentity,
  tokens: [readFileSync(kernel.adminToken, "utf8")],
});
const described = await admin.system.describe();
console.log(
  "system.describe lists:",
  described.ops.map((o) => o.op).filter((o) => o.startsWith("text.")),
);

// A persona allowed text.reverse and nothing else.
const bob = generateIdentity("bob");
await admin.personas.register("bob", bob.publicKey);
const { token } = await admin.tokens.mint("bob", { rights: [{ ops: ["text.reverse"], targets: ["kernel://"] }], ttlMs: 60_000 });
const client = await KernelClient.connect({ socket: kernel.socketPath, identity: bob, tokens: [token] });
console.log("text.reverse:", (await client.call("text.reverse", "kernel://", { text: "persona" })).payload);
try {
  await client.call("storage.read", "obj://ws1/anything");
} catch (e) {
  console.log("outside its grant:", (e as KpipError).errorClass);
}

await client.close();
await admin.close();
await kernel.stop();
const store = new SqliteStore(join(home, "kernel.db"));
console.log(
  "audited:",
  store
    .queryAudit({ persona: "bob" })
    .map((r) => `${r.phase} ${r.op ?? ""} ${r.status ?? ""}${r.errorClass ? `/${r.errorClass}` : ""}`),
);
store.close();
rmSync(home, { recursive: true, force: true });
