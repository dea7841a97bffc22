// What outlives an agent, and what a later agent of its name (its persona id) can reach (red team, wt-red30).
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { attenuate, decodeToken, encodeToken, generateIdentity, parseIdentity } from "@kpip/protocol";
import type { TokenService } from "../src/auth/tokens.js";
import { HOME_FILES, removePersonaTree, SqliteStore } from "../src/index.js";
import type { TokenStore } from "../src/store/types.js";
import { addPersonaKey, removeHome, sandboxSkip, startKernel, type TestKernel, until } from "./harness.js";

const outcome = (p: Promise<unknown>) =>
  p.then(
    () => "ok",
    (e: { errorClass?: string }) => e.errorClass ?? String(e),
  );

const HEALTH = [{ ops: ["system.health"], targets: ["kernel://"] }];
const AGENTS = [{ ops: ["agent.*"], targets: ["agent://**", "kernel://"] }];
const MINT = [{ ops: ["token.mint", "token.inspect"], targets: ["persona://eve/**", "token://**"] }];

/** Spawns `agent://sh/<name>` of `c`'s persona: it prints its bootstrap (identity, token) and waits. */
async function spawnLeaky(c: KernelClient, name: string): Promise<{ identity: string; token: string }> {
  await c.agents.spawn("sh", name, { args: ["-c", "cat <&3; exec sleep 600"], rights: HEALTH, lifetimeMs: 600_000 });
  return until(
    async () => {
      const out = Buffer.from((await c.agents.logs(`agent://sh/${name}`)).stdout).toString();
      return out.includes("\n") ? (JSON.parse(out.split("\n")[0] as string) as { identity: string; token: string }) : undefined;
    },
    30_000,
    `${name}'s bootstrap`,
  );
}

async function endAgent(c: KernelClient, name: string): Promise<void> {
  await c.call("agent.kill", `agent://sh/${name}`, {});
  await until(async () => (await c.agents.status(`agent://sh/${name}`)).state !== "running", 30_000, `${name} ended`);
}

/** A session as the agent whose bootstrap `creds` is (its key, its own token). */
function asAgent(t: TestKernel, creds: { identity: string; token: string }): Promise<KernelClient> {
  return t.connect(parseIdentity(creds.identity), [creds.token]);
}

/** eve (who may spawn agents and mint tokens under her) connected to a fresh kernel; `token` her token. */
async function eveOn(t: TestKernel, tokenOut?: { token?: Uint8Array }): Promise<KernelClient> {
  const eve = await t.persona("eve", [...AGENTS, ...MINT, ...HEALTH]);
  if (tokenOut) tokenOut.token = eve.token;
  return t.connect(eve.identity, [eve.token]);
}

type Store = TokenStore & { revokeToken: TokenStore["revokeToken"] };

describe("tokens minted for an agent's persona id end with the agent", () => {
  it("a token its spawner minted for an agent's persona ends with the agent: a later agent of the name cannot use it", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const c = await eveOn(t);
      const first = await spawnLeaky(c, "w1");
      // eve mints a token of its own for her agent's persona id (beside the one the spawn gave it).
      const minted = (await c.call("token.mint", "persona://eve/agent.w1", { rights: HEALTH, ttlMs: 600_000 })).payload as {
        token: Uint8Array;
        id: string;
      };
      const a1 = await asAgent(t, first);
      assert.equal(await outcome(a1.call("system.health", "kernel://", {}, { caps: [minted.token] })), "ok");
      await endAgent(c, "w1");

      const second = await spawnLeaky(c, "w1");
      const a2 = await asAgent(t, second);
      assert.equal(a2.persona, "eve/agent.w1");
      assert.equal(
        await outcome(a2.call("system.health", "kernel://", {}, { caps: [minted.token] })),
        "CAPABILITY",
        "the token minted for the earlier agent acts for no later one",
      );
      const st = await c.call("token.inspect", `token://${minted.id}`, { token: minted.token });
      assert.equal((st.payload as { status: string }).status, "revoked");
      // On the record: the kernel's revocation at the agent's end names it.
      const rec = t.k.inspect
        .queryAudit({ op: "token.revoked", limit: 100 })
        .map((r) => JSON.parse(r.detail ?? "{}") as { revoked?: string; mintedFor?: string[] })
        .find((d) => d.revoked === decodeToken(Buffer.from(first.token, "base64url")).claims.id);
      assert.deepEqual(rec?.mintedFor, [minted.id]);
      await endAgent(c, "w1");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a token narrowed offline into an agent's persona acts for no agent of the name: not the one it was narrowed for, nor a later one", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const eve: { token?: Uint8Array } = {};
      const c = await eveOn(t, eve);
      const first = await spawnLeaky(c, "w1");
      // eve's token (usable by every persona under her), narrowed offline to her agent's persona id:
      // the kernel never minted it, and revoking it would revoke hers.
      const narrowed = encodeToken(attenuate(decodeToken(eve.token as Uint8Array), { t: "sub", v: "eve/agent.w1" }));
      const a1 = await asAgent(t, first);
      assert.equal(await outcome(a1.call("system.health", "kernel://", {}, { caps: [narrowed] })), "CAPABILITY");
      await endAgent(c, "w1");
      const second = await spawnLeaky(c, "w1");
      const a2 = await asAgent(t, second);
      assert.equal(await outcome(a2.call("system.health", "kernel://", {}, { caps: [narrowed] })), "CAPABILITY");
      // Its own token, narrowed offline to itself, still acts (it ends with the agent).
      const own = encodeToken(attenuate(decodeToken(Buffer.from(second.token, "base64url")), { t: "sub", v: "eve/agent.w1" }));
      assert.equal(await outcome(a2.call("system.health", "kernel://", {}, { caps: [own] })), "ok");
      // eve's own token still acts as hers.
      assert.equal(await outcome(c.call("system.health", "kernel://", {})), "ok");
      await endAgent(c, "w1");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a token minted for an agent's persona ends with it on a full disk too, stored at a clean stop; a start revokes any left", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    let minted: { token: Uint8Array; id: string };
    let spare: { id: string };
    try {
      const c = await eveOn(t);
      // No tick from here on: room comes back just before the stop.
      (t.k as unknown as { housekeeping?: { stop(): void } }).housekeeping?.stop();
      const store = (t.k as unknown as { services: { store: Store } }).services.store;
      await spawnLeaky(c, "w1");
      minted = (await c.call("token.mint", "persona://eve/agent.w1", { rights: HEALTH, ttlMs: 600_000 })).payload as {
        token: Uint8Array;
        id: string;
      };
      // And one for a name no agent of hers runs as (yet).
      spare = (await c.call("token.mint", "persona://eve/agent.w9", { rights: HEALTH, ttlMs: 600_000 })).payload as {
        id: string;
      };
      const revoke = store.revokeToken.bind(store);
      let full = true;
      store.revokeToken = (...a) => {
        if (full) throw Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" });
        return revoke(...a);
      };
      await endAgent(c, "w1");
      assert.ok(!store.revokedTokenIds().includes(minted.id), "its revocation kept for room");
      const tokens = (t.k as unknown as { services: { tokens: TokenService } }).services.tokens;
      assert.ok(tokens.revocationUnstored(minted.id), "in force while kept for room");
      // No later agent of the name acts while it waits (case 531): the spawn is refused.
      assert.equal(await outcome(spawnLeaky(c, "w1")), "RESOURCE");
      full = false;
    } finally {
      await t.stop();
    }
    const store = new SqliteStore(join(t.home, "kernel.db"));
    try {
      assert.ok(store.revokedTokenIds().includes(minted.id), "stored at the clean stop");
      assert.ok(!store.revokedTokenIds().includes(spare.id));
    } finally {
      store.close();
    }
    // The next start: no token for an agent's persona outlives the kernel its agents ran in.
    const t2 = await startKernel({}, t.home);
    try {
      const store2 = (t2.k as unknown as { services: { store: Store } }).services.store;
      assert.ok(store2.revokedTokenIds().includes(spare.id), "a start revokes tokens for agent personas left unrevoked");
    } finally {
      await t2.stop();
      removeHome(t.home);
    }
  });
});

describe("a persona id removed and registered again", () => {
  it("offline within one tick: the earlier holder's session, still open until the tick, starts nothing (an agent under its parent's token would run on as the new holder's)", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const admin = await t.admin();
      // pol's token, which the removal of pol/sub does not revoke, used by pol/sub.
      const parent = await t.persona("pol", [...AGENTS, ...HEALTH]);
      const sub = generateIdentity("pol/sub");
      addPersonaKey(t, "pol/sub", sub.publicKey);
      const c = await t.connect(sub, [parent.token]);
      // The kernel takes offline changes in at its tick: none comes until the test asks.
      (t.k as unknown as { housekeeping?: { stop(): void } }).housekeeping?.stop();
      // As `kpip persona remove` then `kpip persona add` (another holder, another key) beside the kernel.
      const other = generateIdentity("pol/sub");
      const db = new SqliteStore(join(t.home, HOME_FILES.database));
      try {
        db.withJournal({ actor: "test", op: "persona.remove", target: "persona://pol/sub", message: "removed" }, () =>
          removePersonaTree(db, "pol/sub", (ids) => {
            for (const id of ids) db.revokeToken(id, "test", Date.now());
          }),
        );
        db.withJournal({ actor: "test", op: "persona.register", target: "persona://pol/sub", message: "again" }, () =>
          db.addPersona("pol/sub", other.publicKey),
        );
      } finally {
        db.close();
      }
      // Before the tick, the earlier holder's open session spawns an agent under pol's token.
      const spawned = await outcome(
        c.agents.spawn("sh", "x", { args: ["-c", "sleep 600"], rights: HEALTH, lifetimeMs: 600_000 }),
      );
      (t.k as unknown as { services: { applyOfflineChanges(): void } }).services.applyOfflineChanges();
      const running = (
        (await admin.call("agent.list", "kernel://")).payload as { agents: { persona: string; state: string }[] }
      ).agents.filter((a) => a.state === "running");
      assert.deepEqual(running, [], "no agent of the earlier holder's runs on as the new holder's");
      // Refused AUTH (the client takes it as its session's end: "re-attesting after AUTH").
      assert.match(spawned, /AUTH/);
      // The new holder acts.
      const n = await t.connect(other, [parent.token]);
      assert.equal(await outcome(n.call("system.health", "kernel://", {})), "ok");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("offline within one tick: the earlier holder's sessions, still open until the tick, read nothing either (op.list, token.list, agent.list would show the new holder's)", async () => {
    const t = await startKernel();
    try {
      const reads = [{ ops: ["op.list", "token.list", "agent.list"], targets: ["kernel://"] }];
      const parent = await t.persona("pol", [...reads, ...HEALTH]);
      const sub = generateIdentity("pol/sub");
      addPersonaKey(t, "pol/sub", sub.publicKey);
      const ops = ["op.list", "token.list", "agent.list"];
      const sessions = await Promise.all(ops.map(() => t.connect(sub, [parent.token])));
      // Each reads while its registration stands (the stamp checked at attestation, unchanged),
      // and no read asks the registry: a stat per request, no lookup.
      const store = (t.k as unknown as { services: { store: SqliteStore } }).services.store;
      const getPersona = store.getPersona;
      let lookups = 0;
      store.getPersona = (id) => {
        lookups++;
        return getPersona.call(store, id);
      };
      for (const [i, c] of sessions.entries()) assert.equal(await outcome(c.call(ops[i] as string, "kernel://", {})), "ok");
      store.getPersona = getPersona;
      assert.equal(lookups, 0, "reads of a standing registration ask no registry");
      (t.k as unknown as { housekeeping?: { stop(): void } }).housekeeping?.stop();
      const other = generateIdentity("pol/sub");
      const db = new SqliteStore(join(t.home, HOME_FILES.database));
      try {
        db.withJournal({ actor: "test", op: "persona.remove", target: "persona://pol/sub", message: "removed" }, () =>
          removePersonaTree(db, "pol/sub", () => {}),
        );
        db.withJournal({ actor: "test", op: "persona.register", target: "persona://pol/sub", message: "again" }, () =>
          db.addPersona("pol/sub", other.publicKey),
        );
      } finally {
        db.close();
      }
      // Before the tick: every read of the earlier holder's sessions is refused (one op a session:
      // the client takes AUTH as its session's end).
      for (const [i, c] of sessions.entries()) {
        // Refused AUTH (the client takes it as its session's end: "re-attesting after AUTH").
        assert.match(await outcome(c.call(ops[i] as string, "kernel://", {})), /AUTH/, `${ops[i]} refused`);
      }
      // The new holder reads.
      const n = await t.connect(other, [parent.token]);
      assert.equal(await outcome(n.call("op.list", "kernel://", {})), "ok");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("the end of the earlier holder's op, killed at its removal, does not reach the new holder's subscription; the operator's does", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const rights = [
        { ops: ["compute.submit", "op.*", "event.subscribe"], targets: ["op://**", "topic://kernel/personas/oli/**"] },
      ];
      const admin = await t.admin();
      const old = await t.persona("oli/w", rights);
      const c = await t.connect(old.identity, [old.token]);
      const earlier = await c.compute.command("sleep", ["300"]);
      await until(() => t.k.inspect.getOp(earlier.id)?.state === "running", 30_000, "the earlier holder's command running");
      // Its end comes after the removal's answer, when its process has gone (later on a busy host):
      // held here until the id is registered again and subscribed to.
      const held: Parameters<typeof t.k.events.emit>[] = [];
      const emit = t.k.events.emit.bind(t.k.events);
      t.k.events.emit = (...a) => {
        if (a[0].endsWith(`/ops/${earlier.id}`)) {
          held.push(a);
          return 0;
        }
        return emit(...a);
      };
      await admin.call("persona.remove", "persona://oli/w");
      await until(() => held.length > 0 || undefined, 30_000, "the earlier command's end");

      const again = generateIdentity("oli/w");
      await admin.call("persona.register", "persona://oli/w", { publicKey: again.publicKey });
      const m = await admin.tokens.mint("oli/w", { rights, ttlMs: 600_000 });
      const n = await t.connect(again, [m.token]);
      const sub = await n.events.subscribe("topic://kernel/personas/oli/w/**");
      const ops = await admin.events.subscribe("topic://kernel/**");
      for (const a of held) emit(...a);
      const mine = await n.compute.command("true");
      const seen: string[] = [];
      for await (const e of sub) {
        seen.push(e.topic);
        if (e.topic.endsWith(`/ops/${mine.id}`)) break;
      }
      assert.deepEqual(seen, [`topic://kernel/personas/oli/w/ops/${mine.id}`], "only the new holder's own op");
      for await (const e of ops) if (e.topic.endsWith(`/ops/${earlier.id}`)) break;
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});

describe("an agent's name is each spawner's own", () => {
  it("the admin's agent.kill of another spawner's agent of its own agent's name says on the record which agent it killed, with no intent bytes kept", {
    skip: sandboxSkip,
  }, async () => {
    // Intents past 16 bytes keep their hash only: `args.spawner` is not on the record.
    const t = await startKernel({ auditIntentMaxBytes: 16 });
    try {
      const mallory = await t.persona("mallory", [...AGENTS, ...HEALTH]);
      const m = await t.connect(mallory.identity, [mallory.token]);
      const admin = await t.admin();
      const sleeper = { args: ["-c", "exec sleep 600"], rights: HEALTH, lifetimeMs: 600_000 };
      const hers = await m.agents.spawn("sh", "w1", sleeper);
      const mine = await admin.agents.spawn("sh", "w1", sleeper);
      assert.equal(await admin.agents.kill("agent://sh/w1", { spawner: "mallory" }), true);
      assert.equal(await admin.agents.kill("agent://sh/w1"), true);
      await until(async () => (await admin.agents.status("agent://sh/w1")).state !== "running", 30_000, "admin's w1 ended");
      assert.equal(await admin.agents.kill("agent://sh/w1"), false, "no longer running");
      const kills = t.k.inspect
        .queryAudit({ op: "agent.kill", limit: 100 })
        .filter((r) => r.phase === "outcome")
        .map((r) => JSON.parse(r.detail ?? "{}") as Record<string, unknown>);
      assert.deepEqual(
        kills.map((d) => [d.agent, d.persona, d.token, d.killed]),
        [
          ["mallory/sh/w1", "mallory/agent.w1", hers.token, true],
          ["admin/sh/w1", "admin/agent.w1", mine.token, true],
          ["admin/sh/w1", "admin/agent.w1", mine.token, false],
        ],
      );
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
