import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { decodeToken } from "@kpip/protocol";
import Database from "better-sqlite3";
import { createLogger } from "../src/log.js";
import { OpError, type PrimitiveFamily } from "../src/primitives/types.js";
import { PeerLogLimiter } from "../src/session/log-limit.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { klass, withKernel } from "./harness.js";
import { request, unit } from "./pipeline-kit.js";

/** Every page of the caller's token.list at `limit` rows: the ids shown and the pages it took. */
async function listAll(c: KernelClient, limit: number): Promise<{ ids: string[]; pages: number }> {
  const ids: string[] = [];
  let cursor: string | undefined;
  for (let pages = 1; ; pages++) {
    const r = await c.call("token.list", "kernel://", { limit, ...(cursor ? { cursor } : {}) });
    ids.push(...(r.payload as { tokens: { id: string }[] }).tokens.map((t) => t.id));
    if (r.status !== "PARTIAL") return { ids, pages };
    cursor = (r.payload as { cursor: string }).cursor;
  }
}

const token = (id: string, sub: string, mintedBy: string, chain: string[] = []) => ({
  id,
  kid: "k",
  sub,
  chain,
  exp: Date.now() + 60_000,
  mintedBy,
  createdAt: Date.now(),
  family: id,
});
const hex = (n: number) => n.toString(16).padStart(32, "0");

describe("token.list reads the caller's tokens only", () => {
  it("pages hold only the caller's tokens, as many pages whatever other personas mint or refresh meanwhile", async () => {
    await withKernel({}, async (t) => {
      const alice = await t.persona("alice", [
        { ops: ["token.list", "token.mint"], targets: ["kernel://", "persona://alice/**"] },
      ]);
      const mallory = await t.persona("mallory", [{ ops: ["token.list"], targets: ["kernel://"] }]);
      const a = await t.connect(alice.identity, [alice.token]);
      const m = await t.connect(mallory.identity, [mallory.token]);
      for (let i = 0; i < 3; i++)
        await a.tokens.mint(`alice/h${i}`, { rights: [{ ops: ["token.list"], targets: ["kernel://"] }], ttlMs: 60_000 });
      const before = await listAll(a, 2);
      assert.equal(before.ids.length, 4, "her own token and the three she minted");
      // Mallory refreshes her token into a deep chain and many rows, all between alice's rows and after them.
      let tok = mallory.token;
      for (let i = 0; i < 30; i++) {
        const r = await m.call("token.refresh", `token://${decodeToken(tok).claims.id}`, { token: tok }, { caps: [tok] });
        tok = (r.payload as { token: Uint8Array }).token;
      }
      for (let i = 0; i < 3; i++)
        await a.tokens.mint(`alice/late${i}`, { rights: [{ ops: ["token.list"], targets: ["kernel://"] }], ttlMs: 60_000 });
      const after = await listAll(a, 2);
      assert.equal(after.ids.length, 7);
      assert.deepEqual(after.ids.slice(0, 4), before.ids, "her earlier rows in order, none of mallory's among them");
      assert.equal(after.pages, 4, "7 rows at 2 a page: no page spent on rows she does not see");
      const first = await a.call("token.list", "kernel://", { limit: 7 });
      assert.equal(first.status, "SUCCESS", "all of hers fit one page of 7, however many rows others hold");
      // Mallory sees her own rows (the first and her 30 refreshes), none of alice's.
      const hers = await listAll(m, 1000);
      assert.equal(hers.ids.length, 31);
      assert.ok(!hers.ids.some((id) => after.ids.includes(id)));
    });
  });

  it("a token is seen by its subject, its minter and the subjects up its chain, and by no one else; an older home is filled in", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-viewers-"));
    try {
      const path = join(dir, "k.db");
      const s = new SqliteStore(path);
      s.recordToken(token(hex(1), "alice", "admin"));
      s.recordToken(token(hex(2), "carol", "admin", [hex(1)])); // derived from alice's, for carol
      s.recordToken(token(hex(3), "dave", "carol", [hex(1), hex(2)]));
      s.recordToken(token(hex(4), "mallory", "admin"));
      const seen = (tree: string) => s.listTokensSeenBy(tree, undefined, 0, 100).map((r) => r.id);
      assert.deepEqual(seen("alice"), [hex(1), hex(2), hex(3)]);
      assert.deepEqual(seen("carol"), [hex(2), hex(3)]);
      assert.deepEqual(seen("dave"), [hex(3)]);
      assert.deepEqual(seen("mallory"), [hex(4)]);
      assert.deepEqual(seen("al"), [], "a prefix of an id is not its tree");
      assert.deepEqual(
        s.listTokensSeenBy("alice", "dave", 0, 100).map((r) => r.id),
        [hex(3)],
      );
      assert.deepEqual(
        s.listTokensSeenBy("alice", undefined, 1, 1).map((r) => r.id),
        [hex(2)],
        "after a position, at most limit",
      );
      assert.equal(s.tokenSeenBy(hex(3), "alice"), true);
      assert.equal(s.tokenSeenBy(hex(3), "mallory"), false);
      s.close();
      // A home from before the table: its rows are filled in once, at open.
      const db = new Database(path);
      db.exec("DROP TABLE token_viewers; DELETE FROM meta WHERE key = 'token_viewers_filled'");
      db.close();
      const again = new SqliteStore(path);
      assert.deepEqual(
        again.listTokensSeenBy("alice", undefined, 0, 100).map((r) => r.id),
        [hex(1), hex(2), hex(3)],
      );
      // A deleted token's rows go with it.
      again.pruneTokens(Date.now() + 120_000);
      assert.deepEqual(again.listTokensSeenBy("alice", undefined, 0, 100), []);
      again.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("tokens past the format's bounds, and INTERNAL failures in the log", () => {
  it("token.refresh and agent.spawn from a token 31 deep are SEMANTIC, not INTERNAL; the kernel serves on", async () => {
    await withKernel({}, async (t) => {
      const m = await t.persona("mallory", [{ ops: ["storage.read", "agent.spawn"], targets: ["obj://ws/x", "agent://**"] }]);
      const c = await t.connect(m.identity, []);
      let tok = m.token;
      // Each refresh adds the token it came from to the chain: 31 deep is as deep as a token goes.
      for (let d = 0; d < 31; d++) {
        const r = await c.call("token.refresh", `token://${decodeToken(tok).claims.id}`, { token: tok }, { caps: [tok] });
        tok = (r.payload as { token: Uint8Array }).token;
      }
      await assert.rejects(
        c.call("token.refresh", `token://${decodeToken(tok).claims.id}`, { token: tok }, { caps: [tok] }),
        klass("SEMANTIC", "chain"),
      );
      await assert.rejects(
        c.agents.spawn(
          "true",
          "deep",
          { rights: [{ ops: ["storage.read"], targets: ["obj://ws/x"] }], lifetimeMs: 1000 },
          { caps: [tok] },
        ),
        klass("SEMANTIC", "chain"),
      );
      assert.equal((await (await t.admin()).system.health()).status, "ok");
    });
  });

  it("an op failing INTERNAL again and again logs within its persona's budget, then one suppressed line", async () => {
    const lines: string[] = [];
    const log = createLogger("silent", false);
    const counting = new Proxy(log, {
      get: (target, key) =>
        key === "error" || key === "warn" || key === "info"
          ? (_o: unknown, msg: string) => lines.push(msg)
          : Reflect.get(target, key),
    });
    const peerLog = new PeerLogLimiter(counting, { lines: 3, windowMs: 60_000 });
    const crash: PrimitiveFamily = {
      name: "c",
      ops: [
        {
          op: "c.crash",
          description: "a handler with a bug",
          targets: ["kernel"],
          args: {},
          idempotent: true,
          effects: false,
          handler: () => {
            throw new TypeError("a bug");
          },
        },
        {
          op: "c.own",
          description: "a handler failing with its own class",
          targets: ["kernel"],
          args: {},
          idempotent: true,
          effects: false,
          handler: () => {
            throw new OpError("RESOURCE", "own");
          },
        },
      ],
    };
    const u = unit({ peerLog, families: [crash], maxInFlight: 64 });
    try {
      const answers = await Promise.all(
        Array.from({ length: 40 }, () => u.send(request({ op: "c.crash", target: "kernel://", args: {} }))),
      );
      assert.ok(answers.every((a) => a.error === "INTERNAL"));
      assert.equal((await u.send(request({ op: "c.own", target: "kernel://", args: {} }))).error, "RESOURCE");
      assert.deepEqual(lines, ["primitive failed", "primitive failed", "primitive failed"], "three lines, not forty");
      peerLog.sweep(Date.now() + 120_000);
      assert.equal(lines.length, 4, "then one line saying how many were suppressed");
    } finally {
      u.close();
    }
  });
});
