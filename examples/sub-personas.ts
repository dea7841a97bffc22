/**
 * A persona that manages its own workers: the admin grants alice `persona.*` over
 * `persona://alice/**`; alice registers a worker sub-persona, gives it a narrow token, and the
 * worker acts. Removing the worker ends its session at once and revokes what it was given.
 * Every step is a kernel op, so every step is on the audit record.
 *
 *   npm run example:sub-personas
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KernelClient, KpipError } from "@kpip/client";
import { Kernel } from "@kpip/kernel";
import { generateIdentity } from "@kpip/protocol";

const home = mkdtempSync(join(tmpdir(), "kpip-sub-personas-"));
const kernel = new Kernel({ home, logLevel: "error" });
await kernel.start();
const socket = kernel.socketPath;

// The operator: registers alice and lets her manage her own sub-personas and workspace.
const admin = await KernelClient.connect({
  socket,
  identity: kernel.adminIdentity,
  tokens: [readFileSync(kernel.adminToken, "utf8")],
});
const aliceId = generateIdentity("alice");
await admin.personas.register("alice", aliceId.publicKey);
const aliceToken = await admin.tokens.mint("alice", {
  rights: [
    { ops: ["persona.*", "token.mint"], targets: ["persona://alice/**"] },
    { ops: ["storage.*"], targets: ["obj://alice/**"] },
  ],
  ttlMs: 3_600_000,
});

// alice: a worker of her own, with a token narrower than hers.
const alice = await KernelClient.connect({ socket, identity: aliceId, tokens: [aliceToken.token] });
const workerId = generateIdentity("alice/worker-1");
await alice.personas.register("alice/worker-1", workerId.publicKey);
const workerToken = await alice.tokens.mint("alice/worker-1", {
  rights: [{ ops: ["storage.write"], targets: ["obj://alice/inbox/**"] }],
  ttlMs: 600_000,
});
console.log(
  "alice's personas:",
  (await alice.personas.list("alice/worker-1")).map((p) => p.persona),
);

const worker = await KernelClient.connect({ socket, identity: workerId, tokens: [workerToken.token] });
await worker.storage.write("obj://alice/inbox/report", "done");
console.log("worker wrote obj://alice/inbox/report");
const outside = await worker.storage.read("obj://alice/inbox/report").catch((e: KpipError) => e);
console.log("worker reading (not granted):", outside instanceof KpipError ? outside.errorClass : "allowed?!");

// Done with the worker: its session ends now, not at its next connect.
const ended = new Promise<Error>((resolve) => worker.once("closed", resolve));
console.log("removed:", await alice.personas.remove("alice/worker-1"));
const why = (await ended) as KpipError;
console.log("worker session ended:", why.errorClass, why.code);

// Someone registering under another persona's name is refused.
const grab = await alice.personas.register("bob", generateIdentity("bob").publicKey).catch((e: KpipError) => e);
console.log("alice registering bob:", grab instanceof KpipError ? grab.errorClass : "allowed?!");

await alice.close();
await admin.close();
await kernel.stop();
rmSync(home, { recursive: true, force: true });
