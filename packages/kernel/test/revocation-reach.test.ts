import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { type KernelClient, KpipError } from "@kpip/client";
import { type CborValue, decodeToken, generateIdentity, parseIdentity } from "@kpip/protocol";
import { HOME_FILES, type PrimitiveFamily, removePersonaTree, SqliteStore } from "../src/index.js";
import { BlobStore } from "../src/store/blobs.js";
import { addPersonaKey, klass, removeHome, sandboxSkip, startKernel, type TestKernel, until } from "./harness.js";
import { bodies, flushReleased, tmpFiles } from "./storage-files.js";

const TASKS = fileURLToPath(new URL("../../test/fixtures/tasks.mjs", import.meta.url));
const SUBMITTING_AGENT = fileURLToPath(new URL("../../test/fixtures/submitting-agent.mjs", import.meta.url));
const LEAKING_AGENT = fileURLToPath(new URL("../../test/fixtures/leaking-agent.mjs", import.meta.url));

/** The audit records of `op` (outcomes of requests and the kernel's own acts), oldest first, their detail parsed. */
const records = (t: TestKernel, op: string) =>
  t.k.inspect
    .queryAudit({ op, limit: 1000 })
    .map((r) => ({ ...r, d: JSON.parse(r.detail ?? "null") as Record<string, unknown> }));

const idOf = (tok: Uint8Array) => decodeToken(tok).claims.id;

/** A token's status as token.inspect answers it to the admin. */
async function status(admin: KernelClient, tok: Uint8Array): Promise<string> {
  const r = await admin.call("token.inspect", `token://${idOf(tok)}`, { token: tok });
  return (r.payload as { status: string }).status;
}

/** An op's status as the admin sees it (op.status answers every op to the admin). */
async function opStatus(
  admin: KernelClient,
  id: string,
): Promise<{ state: string; errorClass?: string; message?: string; deadline?: number }> {
  return (await admin.call("op.status", `op://${id}`)).payload as { state: string; errorClass?: string; message?: string };
}

describe("a revocation reaches the whole refresh family", () => {
  it("revoking a refreshed copy ends the older copy, its refreshes and what was minted from any copy, across a restart", async () => {
    let t = await startKernel();
    const home = t.home;
    try {
      const admin = await t.admin();
      const carol = generateIdentity("carol");
      addPersonaKey(t, "carol", carol.publicKey);
      const rights = [
        { ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] },
        { ops: ["token.mint"], targets: ["persona://carol/**"] },
      ];
      const T = (await admin.tokens.mint("carol", { rights, ttlMs: 600_000, maxLifetimeMs: 3_600_000 })).token;
      const c = await t.connect(carol, []);
      const refresh = async (tok: Uint8Array) =>
        (
          (await c.call("token.refresh", `token://${idOf(tok)}`, { token: tok }, { caps: [tok] })).payload as {
            token: Uint8Array;
          }
        ).token;
      // Minted from the first copy before it was refreshed, and from the refreshed copy after.
      const fromT = (await c.tokens.mint("carol/helper", { rights: rights.slice(0, 1), ttlMs: 60_000 }, { caps: [T] })).token;
      const T1 = await refresh(T);
      const fromT1 = (await c.tokens.mint("carol/helper", { rights: rights.slice(0, 1), ttlMs: 60_000 }, { caps: [T1] })).token;
      await c.storage.write("obj://ws1/x", "1", { caps: [T1] });
      // A copy of an unrelated token of carol's: untouched.
      const other = (await admin.tokens.mint("carol", { rights: rights.slice(0, 1), ttlMs: 600_000 })).token;

      await admin.call("token.revoke", `token://${idOf(T1)}`);

      // The older copy is as revoked as the one named: no use, no refresh into a fresh copy.
      await assert.rejects(c.storage.write("obj://ws1/x", "2", { caps: [T] }), klass("CAPABILITY"));
      await assert.rejects(refresh(T), klass("CAPABILITY"));
      for (const tok of [T, T1, fromT, fromT1]) assert.equal(await status(admin, tok), "revoked", idOf(tok));
      assert.equal(await status(admin, other), "valid");
      await c.storage.write("obj://ws1/x", "3", { caps: [other] });
      // The revocation's record lists every token it ended, and the family's root revoked with it.
      const rec = records(t, "token.revoke").find((r) => r.phase === "outcome" && r.d.revoked === idOf(T1));
      assert.equal(rec?.d.family, idOf(T));
      assert.deepEqual([...((rec?.d.ended ?? []) as string[])].sort(), [T, T1, fromT, fromT1].map(idOf).sort());

      // Persisted: after a restart the older copy is still refused.
      await t.stop();
      t = await startKernel({}, home);
      const again = await t.connect(carol, []);
      await assert.rejects(again.storage.write("obj://ws1/x", "4", { caps: [T] }), klass("CAPABILITY"));
      await again.storage.write("obj://ws1/x", "5", { caps: [other] });
    } finally {
      await t.stop();
      removeHome(home);
    }
  });
});

describe("a revocation reaches what runs under the token", () => {
  it("revoking a token kills the agents and cancels the commands and tasks started under it, each ended on the record", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel({ computeWorkers: 1 }, undefined, (k) =>
      k.registerTask("hang", { module: TASKS, export: "hang" }),
    );
    try {
      const admin = await t.admin();
      const rights = [
        { ops: ["agent.*"], targets: ["agent://**", "kernel://"] },
        { ops: ["compute.submit", "op.*"], targets: ["op://**"] },
      ];
      const dan = await t.persona("dan", rights);
      const eve = await t.persona("eve", rights);
      const d = await t.connect(dan.identity, [dan.token]);
      const e = await t.connect(eve.identity, [eve.token]);
      await d.call("agent.spawn", "agent://sleep/d1", { args: ["300"], rights: [], lifetimeMs: 600_000 });
      const submit = async (c: KernelClient, target: string, args: CborValue) =>
        ((await c.call("compute.submit", target, { args })).payload as { id: string }).id;
      const command = await submit(d, "op://command/sleep", ["300"]);
      // One worker: the first task runs, the second waits in the queue.
      const running = await submit(d, "op://task/hang", null);
      const queued = await submit(d, "op://task/hang", null);
      // Another persona's agent and command, under another token: untouched.
      await e.call("agent.spawn", "agent://sleep/e1", { args: ["300"], rights: [], lifetimeMs: 600_000 });
      const eves = await submit(e, "op://command/sleep", ["300"]);
      await until(async () => (await opStatus(admin, command)).state === "running", 30_000, "the command running");
      await until(async () => (await opStatus(admin, running)).state === "running", 30_000, "the task running");
      assert.equal((await opStatus(admin, queued)).state, "queued");

      await admin.call("token.revoke", `token://${dan.id}`);

      const agent = await until(
        () => {
          const a = t.k.inspect.getAgent("dan/sleep/d1");
          return a?.state === "killed" ? a : undefined;
        },
        30_000,
        "dan's agent killed",
      );
      assert.equal(agent.persona, "dan/agent.d1");
      const exited = await until(
        () => records(t, "agent.exited").find((r) => r.d.agent === "dan/sleep/d1"),
        30_000,
        "its exit recorded",
      );
      assert.equal(exited.d.killedBy, "token revoked");
      for (const op of [command, running, queued]) {
        const s = await until(
          async () => {
            const x = await opStatus(admin, op);
            return x.state === "queued" || x.state === "running" ? undefined : x;
          },
          30_000,
          `op ${op} ended`,
        );
        assert.equal(s.state, "cancelled", op);
        assert.equal(s.errorClass, "CAPABILITY", op);
        assert.match(s.message ?? "", new RegExp(`the token that authorized it \\(${dan.id}\\) was revoked`), op);
        assert.ok(
          records(t, "op.state").some(
            (r) =>
              r.target === `op://${op}` &&
              r.d.state === "cancelled" &&
              r.d.errorClass === "CAPABILITY" &&
              /revoked/.test(r.message ?? ""),
          ),
          `op ${op} cancelled on the record`,
        );
      }
      assert.equal(t.k.inspect.getAgent("eve/sleep/e1")?.state, "running");
      assert.equal((await opStatus(admin, eves)).state, "running");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});

describe("a command ends with the token that authorized it", () => {
  it("a command's deadline is capped at its authorizing token's expiry, and it is stopped there", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const admin = await t.admin();
      const p = await t.persona("fay", [{ ops: ["compute.submit", "op.*"], targets: ["op://**"] }], { ttlMs: 3_000 });
      const c = await t.connect(p.identity, [p.token]);
      const exp = decodeToken(p.token).claims.exp;
      const r = await c.call("compute.submit", "op://command/sleep", { args: ["300"], timeoutMs: 3_600_000 });
      const id = (r.payload as { id: string }).id;
      assert.equal((await opStatus(admin, id)).deadline, exp, "the token's expiry, not an hour");
      const s = await until(
        async () => {
          const x = await opStatus(admin, id);
          return x.state === "queued" || x.state === "running" ? undefined : x;
        },
        30_000,
        "the command stopped",
      );
      assert.equal(s.state, "failed");
      assert.equal(s.errorClass, "CAPABILITY");
      assert.match(s.message ?? "", new RegExp(`the token that authorized it \\(${p.id}\\) expired`));
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});

/** gate.put: an op with effects whose handler awaits a gate the test opens, then commits its effect `atomically`. */
function gateFamily() {
  const g = { entered: 0, committed: 0, open: () => {} };
  let opened = new Promise<void>((r) => {
    g.open = r;
  });
  const family: PrimitiveFamily = {
    name: "gate",
    ops: [
      {
        op: "gate.put",
        description: "waits for the test's gate, then commits an effect",
        targets: ["kernel"],
        args: {},
        idempotent: false,
        effects: true,
        handler: async (ctx) => {
          g.entered++;
          await opened;
          return ctx.atomically(() => {
            g.committed++;
            return { status: "SUCCESS", payload: { committed: true } };
          });
        },
      },
    ],
  };
  const reset = () => {
    opened = new Promise<void>((r) => {
      g.open = r;
    });
  };
  return { g, family, reset };
}

describe("a revocation reaches a request between its authorization and its effect", () => {
  it("an effect that awaited past a revocation or its token's expiry commits nothing: FAILURE CAPABILITY, on the record", async () => {
    const { g, family, reset } = gateFamily();
    const t = await startKernel({}, undefined, (k) => k.register(family));
    try {
      const admin = await t.admin();
      const rights = [{ ops: ["gate.*"], targets: ["kernel://"] }];
      // Unrevoked, the op commits: what the refusals below withhold is a real effect.
      const ok = await t.persona("olga", rights);
      const o = await t.connect(ok.identity, [ok.token]);
      const done = o.call("gate.put", "kernel://");
      await until(() => g.entered === 1 || undefined);
      g.open();
      assert.equal((await done).status, "SUCCESS");
      assert.equal(g.committed, 1);

      // Authorized, then revoked while the handler waits: nothing commits.
      reset();
      const dan = await t.persona("dan", rights);
      const d = await t.connect(dan.identity, [dan.token]);
      const revoked = d.call("gate.put", "kernel://").then(
        () => "SUCCESS",
        (e: unknown) => `${(e as { errorClass?: string }).errorClass}: ${(e as Error).message}`,
      );
      await until(() => g.entered === 2 || undefined);
      await admin.call("token.revoke", `token://${idOf(dan.token)}`);
      g.open();
      assert.match(
        await revoked,
        /^CAPABILITY: the capability \S+ that authorized this request was revoked before its effect committed/,
      );
      assert.equal(g.committed, 1);
      await until(
        () =>
          t.k.inspect.queryAudit({ persona: "dan", op: "gate.put", limit: 10 }).find((r) => r.phase === "outcome") ?? undefined,
      );
      const [outcome] = t.k.inspect
        .queryAudit({ persona: "dan", op: "gate.put", limit: 10 })
        .filter((r) => r.phase === "outcome");
      assert.equal(outcome?.status, "FAILURE");
      assert.equal(outcome?.errorClass, "CAPABILITY");

      // Authorized, then expired while the handler waits: the same.
      reset();
      const eve = await t.persona("eve", rights, { ttlMs: 2_000 });
      const exp = decodeToken(eve.token).claims.exp as number;
      const e = await t.connect(eve.identity, [eve.token]);
      const expired = e.call("gate.put", "kernel://").then(
        () => "SUCCESS",
        (err: unknown) => `${(err as { errorClass?: string }).errorClass}: ${(err as Error).message}`,
      );
      await until(() => g.entered === 3 || undefined);
      await until(() => Date.now() > exp + 50 || undefined);
      g.open();
      assert.match(
        await expired,
        /^CAPABILITY: the capability \S+ that authorized this request expired before its effect committed/,
      );
      assert.equal(g.committed, 1);
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
  it("a removed persona's write in flight under a token the removal does not revoke (its parent's) commits nothing after the removal is answered: FAILURE AUTH, on the record", async () => {
    const t = await startKernel();
    const put = BlobStore.prototype.put;
    try {
      const admin = await t.admin();
      const parent = await t.persona("pia", [{ ops: ["storage.*"], targets: ["obj://ws/**"] }]);
      // pia's sub-persona acts under pia's token (a token is usable by its subject's sub-personas):
      // removing the sub-persona revokes the tokens issued to it, not this one.
      const sub = generateIdentity("pia/sub");
      addPersonaKey(t, "pia/sub", sub.publicKey);
      const c = await t.connect(sub, [parent.token]);
      await c.storage.write("obj://ws/small", "hi");
      // The removal is answered while the write's body goes to the file store (after its
      // authorization, before its row).
      let removal: { payload?: unknown } | undefined;
      BlobStore.prototype.put = async function (this: BlobStore, data: Uint8Array) {
        removal ??= await admin.call("persona.remove", "persona://pia/sub");
        return put.call(this, data);
      };
      await assert.rejects(c.storage.write("obj://ws/big", Buffer.alloc(300_000, 1)), klass("AUTH", "removed"));
      const outcome = await until(() =>
        t.k.inspect
          .queryAudit({ persona: "pia/sub", op: "storage.write", limit: 10 })
          .find((r) => r.phase === "outcome" && r.target === "obj://ws/big"),
      );
      assert.equal(
        (removal?.payload as { sessionsEnded?: number } | undefined)?.sessionsEnded,
        1,
        "the removal was answered first",
      );
      assert.equal(outcome.status, "FAILURE");
      assert.equal(outcome.errorClass, "AUTH");
      assert.match(outcome.message ?? "", /pia\/sub was removed .* before its effect committed: nothing was changed/);
      await assert.rejects(admin.storage.stat("obj://ws/big"), klass("SEMANTIC", "no object"), "nothing was written");
      const usage = (await admin.call("resource.query", "persona://pia/sub")).payload as { usage: Record<string, number> };
      // obj://ws/small alone: its 2 bytes, its path's 5 and its row's 512.
      assert.equal(usage.usage["storage.bytes"], 2 + 5 + 512, "nothing more was charged to the removed persona");
      flushReleased(t.k); // the housekeeping tick's removal, now
      assert.deepEqual(bodies(t.home), [], "the body written for it is freed");
    } finally {
      BlobStore.prototype.put = put;
      await t.stop();
      removeHome(t.home);
    }
  });
});

describe("a revocation reaches the uploads begun under the token", () => {
  it("an upload begun under a revoked token is dropped at once: its slot and declared bytes are free again, not held until it expires idle", async () => {
    const t = await startKernel({ maxUploadsPerPersona: 1 });
    try {
      const admin = await t.admin();
      const rights = [{ ops: ["storage.*"], targets: ["obj://ws/**"] }];
      const first = await t.persona("uploader", rights);
      const c1 = await t.connect(first.identity, [first.token]);
      const begin = (c: KernelClient) => c.call("storage.upload.begin", "obj://ws/big", { size: 1_000_000 });
      await begin(c1);
      await assert.rejects(begin(c1), klass("RESOURCE", "uploads in progress"), "the tree's one upload slot is taken");
      await admin.tokens.revoke(first.id);
      // A new token for the same persona: the slot the revoked upload held is free (it would have
      // stayed taken for uploadIdleMs, ten minutes by default).
      const second = await admin.tokens.mint("uploader", { rights, ttlMs: 3_600_000 });
      const c2 = await t.connect(first.identity, [second.token]);
      await until(
        async () => {
          try {
            await begin(c2);
            return true;
          } catch (e) {
            if ((e as { errorClass?: string }).errorClass !== "RESOURCE") throw e;
            return false;
          }
        },
        30_000,
        "an upload begun once the revoked one was dropped",
      );
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("an upload the kernel ends (its token revoked, or idle past uploadIdleMs) is on the record with its id and why; its begin names the id", async () => {
    const t = await startKernel({ uploadIdleMs: 300 });
    try {
      const admin = await t.admin();
      const rights = [{ ops: ["storage.*"], targets: ["obj://ws/**"] }];
      const p = await t.persona("uploader", rights);
      const c = await t.connect(p.identity, [p.token]);
      const begin = async (path: string) =>
        ((await c.call("storage.upload.begin", path, { size: 1000 })).payload as { upload: string }).upload;
      const idle = await begin("obj://ws/idle");
      const began = records(t, "storage.upload.begin").find((r) => r.phase === "outcome" && r.target === "obj://ws/idle");
      assert.equal(began?.d.upload, idle, "the begin's outcome names the upload");
      await c.call("storage.upload.chunk", "obj://ws/idle", { upload: idle, offset: 0, data: new Uint8Array(10) });
      const ended = () => records(t, "storage.upload.ended");
      const gone = await until(() => ended().find((r) => r.d.upload === idle), 30_000, "the idle upload's end on the record");
      assert.equal(gone.persona, "uploader");
      assert.equal(gone.target, "obj://ws/idle");
      assert.deepEqual(gone.d, { upload: idle, reason: "idle", received: 10, size: 1000 });
      // Revoked: dropped at once, and said so.
      const held = await begin("obj://ws/held");
      await admin.tokens.revoke(p.id);
      const dropped = await until(
        () => ended().find((r) => r.d.upload === held),
        30_000,
        "the revoked upload's end on the record",
      );
      assert.equal(dropped.d.reason, "revoked");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("an upload whose commit was syncing when its token was revoked is dropped when the commit is refused, not kept with its body until it expires idle", async () => {
    const t = await startKernel({ maxUploadsPerPersona: 1 });
    const install = BlobStore.prototype.install;
    try {
      const admin = await t.admin();
      const rights = [{ ops: ["storage.*"], targets: ["obj://ws/**"] }];
      const first = await t.persona("committer", rights);
      const c1 = await t.connect(first.identity, [first.token]);
      const data = Buffer.alloc(300_000, 7);
      const sha256 = createHash("sha256").update(data).digest();
      const { upload } = (await c1.call("storage.upload.begin", "obj://ws/big", { size: data.length })).payload as {
        upload: string;
      };
      await c1.call("storage.upload.chunk", "obj://ws/big", { upload, offset: 0, data });
      // The revocation is answered while the commit moves the verified body to its address (after
      // the commit's checks, before its row): the revocation cannot drop an upload being committed.
      let revoked = false;
      BlobStore.prototype.install = async function (this: BlobStore, path: string, hash: Uint8Array) {
        if (!revoked) {
          revoked = true;
          await admin.tokens.revoke(first.id);
        }
        return install.call(this, path, hash);
      };
      await assert.rejects(
        c1.call("storage.upload.commit", "obj://ws/big", { upload, sha256, size: data.length }),
        klass("CAPABILITY", "before its effect committed"),
      );
      assert.ok(revoked, "the revocation came while the commit installed the body");
      await assert.rejects(admin.storage.stat("obj://ws/big"), klass("SEMANTIC", "no object"));
      // The refused commit ended the upload: its body is freed (no object names it) and its slot
      // is free for the persona's new token at once (it was held for uploadIdleMs, ten minutes).
      flushReleased(t.k); // the housekeeping tick's removal, now
      assert.deepEqual(bodies(t.home), [], "no body is left pinned by the revoked upload");
      const second = await admin.tokens.mint("committer", { rights, ttlMs: 3_600_000 });
      const c2 = await t.connect(first.identity, [second.token]);
      await assert.rejects(
        c2.call("storage.upload.commit", "obj://ws/big", { upload, sha256, size: data.length }),
        klass("SEMANTIC", "no upload"),
        "the revoked upload cannot be committed under another token",
      );
      await c2.call("storage.upload.begin", "obj://ws/big", { size: data.length });
    } finally {
      BlobStore.prototype.install = install;
      await t.stop();
      removeHome(t.home);
    }
  });
  it("a removed persona's upload is dropped with it, whatever token began it (its parent's): the tree's place is free at once", async () => {
    const t = await startKernel({ maxUploadsPerPersona: 1 });
    try {
      const admin = await t.admin();
      const parent = await t.persona("pam", [{ ops: ["storage.*"], targets: ["obj://ws/**"] }]);
      const sub = generateIdentity("pam/sub");
      addPersonaKey(t, "pam/sub", sub.publicKey);
      const c = await t.connect(sub, [parent.token]);
      await c.call("storage.upload.begin", "obj://ws/big", { size: 1_000_000 });
      assert.equal(tmpFiles(t.home).length, 1);
      const p = await t.connect(parent.identity, [parent.token]);
      await assert.rejects(p.call("storage.upload.begin", "obj://ws/x", { size: 10 }), klass("RESOURCE", "uploads in progress"));
      // The removal revokes no token here (pam/sub has none of its own): its upload goes with it.
      await admin.call("persona.remove", "persona://pam/sub");
      assert.deepEqual(tmpFiles(t.home), [], "its partial file is removed");
      await p.call("storage.upload.begin", "obj://ws/x", { size: 10 });
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});

describe("a persona's removal reaches what it started under a token it does not revoke", () => {
  it("a removed persona's tasks, running and queued, end with it (FAILED/CANCELLED PERMISSION), not at their deadline", async () => {
    const t = await startKernel({ computeWorkers: 1 }, undefined, (k) =>
      k.registerTask("hang", { module: TASKS, export: "hang" }),
    );
    try {
      const admin = await t.admin();
      const parent = await t.persona("pat", [{ ops: ["compute.submit", "op.*"], targets: ["op://**"] }]);
      const sub = generateIdentity("pat/sub");
      addPersonaKey(t, "pat/sub", sub.publicKey);
      const c = await t.connect(sub, [parent.token]);
      const submit = async () =>
        ((await c.call("compute.submit", "op://task/hang", { args: null })).payload as { id: string }).id;
      // One worker: the first task runs, the second waits in the queue.
      const running = await submit();
      const queued = await submit();
      await until(async () => (await opStatus(admin, running)).state === "running", 30_000, "the task running");
      await admin.call("persona.remove", "persona://pat/sub");
      const r = await opStatus(admin, running);
      const q = await opStatus(admin, queued);
      assert.deepEqual([r.state, r.errorClass], ["failed", "PERMISSION"], r.message);
      assert.match(r.message ?? "", /persona that started it was removed/);
      assert.deepEqual([q.state, q.errorClass], ["cancelled", "PERMISSION"], q.message);
      assert.match(q.message ?? "", /persona that submitted it was removed/);
      // The worker is free: the parent's task runs at once.
      const p = await t.connect(parent.identity, [parent.token]);
      const mine = ((await p.call("compute.submit", "op://task/hang", { args: null })).payload as { id: string }).id;
      await until(async () => (await opStatus(admin, mine)).state === "running", 30_000, "the parent's task running");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
  it("a persona removed and registered again offline within one tick (the CLI beside a running kernel): the earlier holder's tasks end, the new holder's run", async () => {
    const t = await startKernel({ computeWorkers: 1, heartbeatMs: 200 }, undefined, (k) =>
      k.registerTask("hang", { module: TASKS, export: "hang" }),
    );
    try {
      const admin = await t.admin();
      const parent = await t.persona("pol", [{ ops: ["compute.submit", "op.*"], targets: ["op://**"] }]);
      const sub = generateIdentity("pol/sub");
      addPersonaKey(t, "pol/sub", sub.publicKey);
      const c = await t.connect(sub, [parent.token]);
      const submit = async () =>
        ((await c.call("compute.submit", "op://task/hang", { args: null })).payload as { id: string }).id;
      const running = await submit();
      const queued = await submit();
      await until(async () => (await opStatus(admin, running)).state === "running", 30_000, "the task running");
      // As `kpip persona remove` then `kpip persona add` do beside a running kernel: both
      // changes land before the kernel's tick looks, so the id is registered when it looks.
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
      await until(() => t.k.inspect.offlineJournal().length === 0 || undefined, 30_000, "journal taken in");
      const r = await opStatus(admin, running);
      const q = await opStatus(admin, queued);
      assert.deepEqual([r.state, r.errorClass], ["failed", "PERMISSION"], r.message);
      assert.deepEqual([q.state, q.errorClass], ["cancelled", "PERMISSION"], q.message);
      // The new holder's own work runs, and is not taken for the earlier holder's.
      const n = await t.connect(other, [parent.token]);
      const mine = ((await n.call("compute.submit", "op://task/hang", { args: null })).payload as { id: string }).id;
      await until(async () => (await opStatus(admin, mine)).state === "running", 30_000, "the new holder's task running");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});

describe("an agent's end reaches what it started", () => {
  it("a command an agent submitted under its own token is cancelled when the agent ends (its token is revoked then)", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const admin = await t.admin();
      const rights = [
        { ops: ["agent.*"], targets: ["agent://node/**", "kernel://"] },
        { ops: ["compute.submit", "op.*"], targets: ["op://**"] },
      ];
      const fay = await t.persona("fay", rights);
      const c = await t.connect(fay.identity, [fay.token]);
      const a = await c.agents.spawn("node", "s1", {
        args: [SUBMITTING_AGENT],
        rights: [{ ops: ["compute.submit", "op.*"], targets: ["op://**"] }],
        lifetimeMs: 60_000,
      });
      await until(async () => (await c.agents.status(a.agent as string)).state !== "running", 30_000, "the agent ended");
      const out = Buffer.from((await c.agents.logs(a.agent as string)).stdout).toString();
      const { op } = JSON.parse(out) as { op: string };
      const s = await until(
        async () => {
          const x = await opStatus(admin, op);
          return x.state === "queued" || x.state === "running" ? undefined : x;
        },
        30_000,
        "the agent's command ended with it",
      );
      assert.equal(s.state, "cancelled");
      assert.equal(s.errorClass, "CAPABILITY");
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });

  it("a session another process opened with the agent's credentials ends when the agent ends (its persona leaves the registry)", {
    skip: sandboxSkip,
  }, async () => {
    const t = await startKernel();
    try {
      const gil = await t.persona("gil", [
        { ops: ["agent.*"], targets: ["agent://node/**", "kernel://"] },
        { ops: ["system.*"], targets: ["kernel://"] },
      ]);
      const c = await t.connect(gil.identity, [gil.token]);
      const a = await c.agents.spawn("node", "l1", {
        args: [LEAKING_AGENT],
        rights: [{ ops: ["system.*"], targets: ["kernel://"] }],
        lifetimeMs: 60_000,
      });
      const boot = await until(
        async () => {
          const out = Buffer.from((await c.agents.logs(a.agent as string)).stdout).toString();
          return out.includes("\n") ? (JSON.parse(out) as { identity: string; token: string }) : undefined;
        },
        30_000,
        "the agent's credentials, handed out",
      );
      const other = await t.connect(parseIdentity(boot.identity), [boot.token]);
      assert.equal(other.persona, a.persona);
      assert.equal((await other.system.health()).status, "ok");
      const closed = new Promise<Error>((resolve) => other.once("closed", (e: Error) => resolve(e)));
      await c.agents.kill(a.agent as string);
      await until(() => other.state === "closed", 30_000, "the session opened with the agent's credentials to end");
      const err = await closed;
      assert.ok(err instanceof KpipError && err.errorClass === "AUTH" && err.code === "PERSONA_REMOVED", String(err));
    } finally {
      await t.stop();
      removeHome(t.home);
    }
  });
});
