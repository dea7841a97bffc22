// What a root key's retirement reaches besides agents and ops: the uploads its tokens began (red team, wt-red59).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { decodeToken } from "@kpip/protocol";
import { RootKeys } from "../src/index.js";
import { klass, removeHome, startKernel, until } from "./harness.js";

const outcome = (p: Promise<unknown>) =>
  p.then(
    () => "ok",
    (e: { errorClass?: string }) => e.errorClass ?? String(e),
  );

describe("a retired key reaches the uploads begun under its tokens", () => {
  it("an upload begun under a token whose key is retired is dropped, on the record: no other token of its persona commits its bytes, and its slot is free", async () => {
    const t = await startKernel({ maxUploadsPerPersona: 1 });
    try {
      const rights = [{ ops: ["storage.*"], targets: ["obj://ws/**"] }];
      const up = await t.persona("up", rights);
      const oldKid = decodeToken(up.token).claims.kid;
      const c1 = await t.connect(up.identity, [up.token]);
      const bytes = new TextEncoder().encode("sent under the old key");
      const upload = (
        (await c1.call("storage.upload.begin", "obj://ws/doc", { size: bytes.length })).payload as { upload: string }
      ).upload;
      await c1.call("storage.upload.chunk", "obj://ws/doc", { upload, offset: 0, data: bytes });
      // The persona's next token, signed with the new key (the kernel reads the key file at most once a second).
      RootKeys.rotate(t.home);
      const admin = await t.admin();
      const fresh = await until(
        async () => {
          const m = await admin.tokens.mint("up", { rights, ttlMs: 3_600_000 });
          return decodeToken(m.token).claims.kid !== oldKid ? m.token : undefined;
        },
        10_000,
        "a token under the new key",
      );
      await admin.close();

      RootKeys.retire(t.home, oldKid);
      await until(async () => (await outcome(c1.storage.stat("obj://ws/doc"))) === "CAPABILITY", 10_000, "the old key retired");
      // The kernel ends the upload at its next housekeeping tick, as a revocation would at once.
      const ended = await until(
        () =>
          t.k.inspect
            .queryAudit({ op: "storage.upload.ended", limit: 100 })
            .map((r) => JSON.parse(r.detail ?? "{}") as { upload?: string; reason?: string })
            .find((d) => d.upload === upload),
        30_000,
        "the upload's end on the record",
      );
      assert.equal(ended.reason, "key retired");
      const c2: KernelClient = await t.connect(up.identity, [fresh]);
      const sha256 = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
      await assert.rejects(
        c2.call("storage.upload.commit", "obj://ws/doc", { upload, size: bytes.length, sha256 }),
        klass("SEMANTIC", "no upload"),
        "bytes sent under the retired key do not become an object under another token",
      );
      await assert.rejects(c2.storage.stat("obj://ws/doc"), klass("SEMANTIC"));
      // Its place among the tree's uploads is free again.
      await c2.call("storage.upload.begin", "obj://ws/other", { size: 10 });
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a session holding a token whose key is retired is told on the token's notice channel, as at a revocation, without using it", async () => {
    const t = await startKernel();
    try {
      const rights = [{ ops: ["system.health"], targets: ["kernel://"] }];
      const held = await t.persona("held", rights);
      const oldKid = decodeToken(held.token).claims.kid;
      const s = await t.connect(held.identity, [held.token]);
      const notices: { topic: string; data: unknown }[] = [];
      s.on("event", (e: { topic: string; data: unknown }) => notices.push(e));
      // Another persona's session, under the same key, meets the change (the kernel reads the key
      // file at most once a second); the first does nothing.
      const other = await t.persona("other", rights);
      const o = await t.connect(other.identity, [other.token]);
      RootKeys.rotate(t.home);
      RootKeys.retire(t.home, oldKid);
      await until(
        async () => (await outcome(o.call("system.health", "kernel://"))) === "CAPABILITY",
        10_000,
        "the old key retired",
      );
      const notice = await until(
        () => notices.find((n) => n.topic === `topic://kernel/tokens/${held.id}/revoked`),
        30_000,
        "the retirement's notice",
      );
      assert.equal((notice.data as { reason?: string }).reason, "key retired");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
