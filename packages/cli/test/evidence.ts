import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { KernelClient } from "@kpip/client";
import { Kernel, type KernelOptions } from "@kpip/kernel";
import { generateIdentity, type Right } from "@kpip/protocol";
import { connectAdmin } from "./run.js";

/** Every file under `dir` with the SHA-256 of its bytes: the audit tools must leave evidence as it was. */
export function hashTree(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.set(p, createHash("sha256").update(readFileSync(p)).digest("hex"));
      else out.set(p, e.isSocket() ? "socket" : "other");
    }
  };
  walk(dir);
  return out;
}

/** What an evidence test's stage is given: the kernel, its admin's client, and a way to act as another persona. */
export interface EvidenceStage {
  k: Kernel;
  admin: KernelClient;
  /**
   * Registers `persona` (a fresh key), has the admin mint it `rights` for `ttlMs` (ten minutes
   * unless said), with `limits`, and connects as it: its client, and the token minted.
   */
  as(
    persona: string,
    rights: Right[],
    extra?: { ttlMs?: number; limits?: Record<string, number> },
  ): Promise<{ client: KernelClient; token: Awaited<ReturnType<KernelClient["tokens"]["mint"]>> }>;
}

/**
 * A kernel (sandbox none, `options` added) on `home`, staged by `stage`; then its clients closed
 * and the kernel stopped, pass or fail: the home is the evidence at rest the audit tools read.
 * Resolves with what `stage` returned.
 */
export async function evidenceKernel<T>(
  home: string,
  stage: (s: EvidenceStage) => Promise<T>,
  options: Partial<KernelOptions> = {},
): Promise<T> {
  const k = new Kernel({ home, logLevel: "silent", sandbox: "none", ...options });
  await k.start();
  const clients: KernelClient[] = [];
  try {
    const admin = await connectAdmin(home);
    clients.push(admin);
    const as: EvidenceStage["as"] = async (persona, rights, extra = {}) => {
      const id = generateIdentity(persona);
      await admin.personas.register(persona, id.publicKey);
      const token = await admin.tokens.mint(persona, { rights, ...extra, ttlMs: extra.ttlMs ?? 600_000 });
      const client = await KernelClient.connect({ socket: k.socketPath, identity: id, tokens: [token.token], reconnect: false });
      clients.push(client);
      return { client, token };
    };
    return await stage({ k, admin, as });
  } finally {
    for (const c of clients) await c.close().catch(() => {});
    await k.stop();
  }
}
