import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { attenuate, decodeToken, encodeToken, type Right } from "@kpip/protocol";
import { klass, removeHome, startKernel, withKernel } from "./harness.js";
import { RawPeer } from "./wire.js";

const KPIP = fileURLToPath(new URL("../../../cli/dist/src/main.js", import.meta.url));

/** `n` op patterns and `n` target patterns, each distinct (what an attacker sends to multiply pairs). */
const wide = (n: number): Right => ({
  ops: Array.from({ length: n }, (_, i) => `storage.read${i}`),
  targets: Array.from({ length: n }, (_, i) => `obj://ws${i}/**`),
});

describe("bounded after authentication: tokens", () => {
  it("token.mint and agent.spawn with 1,500 × 1,500 patterns: SEMANTIC from the size checks, before any escalation check", async () => {
    await withKernel({}, async (t) => {
      const p = await t.persona("mint", [
        { ops: ["token.mint", "agent.spawn", "system.health"], targets: ["persona://mint/**", "agent://**", "kernel://"] },
      ]);
      const c = await t.connect(p.identity, [p.token], { maxAttempts: 1 });
      const huge = [wide(1500)];
      await assert.rejects(c.tokens.mint("mint/sub", { rights: huge, ttlMs: 60_000 }), klass("SEMANTIC", "at most 64"));
      await assert.rejects(c.agents.spawn("true", "x", { rights: huge, lifetimeMs: 60_000 }), klass("SEMANTIC", "at most 64"));
      // Within the format (64 rights × 64 × 64) but over the largest token: still refused on size.
      const full = Array.from({ length: 64 }, () => wide(64));
      await assert.rejects(c.tokens.mint("mint/sub", { rights: full, ttlMs: 60_000 }), klass("SEMANTIC", "maxTokenBytes"));
      // The largest spec that fits is checked for escalation (PERMISSION), and the kernel still serves.
      await assert.rejects(c.tokens.mint("mint/sub", { rights: [wide(40)], ttlMs: 60_000 }), klass("PERMISSION", "escalation"));
      const ok = await c.tokens.mint("mint/sub", { rights: [{ ops: ["system.health"], targets: ["kernel://"] }], ttlMs: 60_000 });
      assert.equal(ok.id.length, 32);
      assert.equal((await c.system.health()).status, "ok");
    });
  });

  it("a token over maxTokenBytes is refused at ATTEST, token.bind and inline; inline tokens per request and bound bytes per session are bounded", async () => {
    await withKernel({ maxTokenBytes: 2048 }, async (t) => {
      const p = await t.persona("big", [{ ops: ["system.health", "token.bind"], targets: ["kernel://", "token://**"] }]);
      // Attenuated offline: 64 caveats of 64 long patterns would be ~300 KB; 4 of them are already too big.
      let big = decodeToken(p.token);
      for (let i = 0; i < 4; i++) {
        big = attenuate(big, { t: "targets", v: Array.from({ length: 16 }, (_, j) => `kernel://${"x".repeat(40)}${i}${j}/**`) });
      }
      const bytes = encodeToken(big);
      assert.ok(bytes.length > 2048 && bytes.length <= 8192, `${bytes.length} bytes`);
      const raw = await RawPeer.connect(t.k.socketPath);
      const welcome = await raw.handshake(p.identity, [bytes]);
      assert.deepEqual(welcome.body.handles, [0]);
      assert.equal(welcome.body.refused?.[0]?.code, "TOO_LARGE");
      raw.close();
      const c = await t.connect(p.identity, [p.token], { maxAttempts: 1 });
      await assert.rejects(
        c.call("token.bind", `token://${big.claims.id}`, { token: bytes }),
        klass("CAPABILITY", "at most 2048 bytes"),
      );
      await assert.rejects(c.call("system.health", "kernel://", {}, { caps: [bytes] }), klass("CAPABILITY", "at most 2048"));
      // Each unseen inline token is a full verification: at most 4 per request.
      const five = Array.from({ length: 5 }, () => p.token);
      await assert.rejects(c.call("system.health", "kernel://", {}, { caps: five }), klass("CAPABILITY", "at most 4 inline"));
      // Bound tokens per session: at most 16 × maxTokenBytes in all (here 32 KiB), whatever their number.
      const base = decodeToken(p.token);
      let bound = 0;
      let refused: unknown;
      for (let i = 0; i < 60 && refused === undefined; i++) {
        const mid = attenuate(base, {
          t: "targets",
          v: Array.from({ length: 16 }, (_, j) => `kernel://${"y".repeat(40)}${i}x${j}/**`),
        });
        const b = encodeToken(mid);
        assert.ok(b.length <= 2048);
        try {
          await c.call("token.bind", `token://${mid.claims.id}`, { token: b });
          bound += b.length;
        } catch (e) {
          refused = e;
        }
      }
      assert.ok(klass("CAPABILITY", "at most 32768 bytes of tokens")(refused), String(refused));
      assert.ok(bound <= 32768 && bound > 20_000, `${bound} bytes bound`);
      assert.equal((await c.system.health()).status, "ok");
    });
  });

  it("token.refresh stops at maxLiveTokens (RESOURCE), expired tokens are pruned, and token.list pages", async () => {
    // The kernel's clock moves on demand: the live-token count is taken at most once a second.
    let skew = 0;
    const t = await startKernel({ maxLiveTokens: 20, tokenRetentionMs: 1, clock: () => Date.now() + skew });
    const home = t.home;
    let t2: Awaited<ReturnType<typeof startKernel>> | undefined;
    try {
      const p = await t.persona("fresh", [{ ops: ["system.health"], targets: ["kernel://"] }]);
      const c = await t.connect(p.identity, [p.token], { maxAttempts: 1 });
      const id = decodeToken(p.token).claims.id;
      // A live token of the persona's own minting outside p.token's refresh family: revoking a
      // copy of the family would end p.token itself (PROTOCOL §13.1), this one ends alone.
      const other = t.k.tokens.mint(undefined, "fresh", {
        sub: "fresh",
        rights: [{ ops: ["system.health"], targets: ["kernel://"] }],
        ttlMs: 3_600_000,
      });
      let refusedAt = -1;
      const copies: string[] = [];
      for (let i = 0; i < 25 && refusedAt < 0; i++) {
        try {
          const r = await c.call("token.refresh", `token://${id}`, { token: p.token }, { caps: [p.token] });
          copies.push((r.payload as { id: string }).id);
        } catch (e) {
          assert.ok(klass("RESOURCE", "maxLiveTokens")(e), String(e));
          refusedAt = i;
        }
      }
      assert.equal(refusedAt, 19, "the 21st live token of the persona is refused");
      // Revoking does not make room (a mint-and-revoke loop would grow the table as well).
      const admin0 = await t.admin();
      await admin0.call("token.revoke", `token://${other.claims.id}`, {});
      await admin0.close();
      skew += 2000;
      await assert.rejects(
        c.call("token.refresh", `token://${id}`, { token: p.token }, { caps: [p.token] }),
        klass("RESOURCE", "revoked ones included"),
      );
      // 2,500 tokens: one answer would pass the decoder's item limit; pages never do. They live
      // a minute of the kernel's clock, so no prune tick can remove them between the listings.
      for (let i = 0; i < 2500; i++) {
        t.k.tokens.mint(undefined, "kernel", {
          sub: "short",
          rights: [{ ops: ["system.health"], targets: ["kernel://"] }],
          ttlMs: 60_000,
        });
      }
      const admin = await t.admin();
      const first = await admin.call("token.list", "kernel://", { limit: 1000 });
      assert.equal(first.status, "PARTIAL");
      const all: { sub: string }[] = [];
      for await (const r of admin.tokens.list({ pageSize: 1000 })) all.push(r);
      assert.ok(all.length >= 2500 + 21, `${all.length} tokens listed`);
      // And `kpip token list` (it used to hang): every page, then exit 0. Not spawnSync: this kernel runs in-process.
      const cli = await promisify(execFile)(process.execPath, [KPIP, "token", "list", "--json", "--home", home], {
        timeout: 60_000,
        maxBuffer: 64 << 20,
      });
      assert.equal((JSON.parse(cli.stdout) as unknown[]).length, all.length);
      await t.stop();
      // Expired past tokenRetentionMs: pruned when the kernel starts (and every minute while it runs).
      t2 = await startKernel({ tokenRetentionMs: 1, clock: () => Date.now() + skew + 120_000 }, home);
      const admin2 = await t2.admin();
      const left: { sub: string }[] = [];
      for await (const r of admin2.tokens.list()) left.push(r);
      assert.equal(left.filter((r) => r.sub === "short").length, 0);
      assert.ok(left.some((r) => r.sub === "fresh"));
    } finally {
      if (t2) await t2.stop();
      else await t.stop();
      removeHome(home);
    }
  });

  it("a refreshed token shares its family's rate bucket", async () => {
    await withKernel({}, async (t) => {
      const p = await t.persona("rated", [{ ops: ["system.health"], targets: ["kernel://"] }], { limits: { rate: 5 } });
      const c = await t.connect(p.identity, [p.token], { maxAttempts: 1 });
      const id = decodeToken(p.token).claims.id;
      const copies: Uint8Array[] = [p.token];
      for (let i = 0; i < 3; i++) {
        const r = await c.call("token.refresh", `token://${id}`, { token: p.token }, { caps: [p.token] });
        copies.push((r.payload as { token: Uint8Array }).token);
      }
      // Separate buckets would admit 4 × 5 at once; one family admits 5 (plus what refills meanwhile).
      const burst = await Promise.allSettled(
        Array.from({ length: 40 }, (_, i) => c.call("system.health", "kernel://", {}, { caps: [copies[i % 4] as Uint8Array] })),
      );
      const admitted = burst.filter((x) => x.status === "fulfilled").length;
      assert.ok(admitted >= 1 && admitted < 20, `${admitted} of 40 admitted`);
      assert.ok(burst.some((x) => x.status === "rejected" && klass("RESOURCE", "rate")(x.reason)));
    });
  });
});
