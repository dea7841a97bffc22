// The control plane under an attested but hostile persona holding a narrow grant (red team, wt-red5).
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { attenuate, decodeToken, encodeToken, generateIdentity, type Right } from "@kpip/protocol";
import { RootKeys } from "../src/index.js";
import { klass, until, withKernel } from "./harness.js";

const outcome = (p: Promise<unknown>) =>
  p.then(
    () => "ok",
    (e: { errorClass?: string }) => e.errorClass ?? String(e),
  );

/** `token` with a `sub` caveat added offline: usable by `sub` (and below) only. */
const narrowTo = (token: Uint8Array, sub: string) => encodeToken(attenuate(decodeToken(token), { t: "sub", v: sub }));

describe("the control plane under a hostile persona", () => {
  it("a token narrowed offline to a sub-persona keeps its limits over its minted subject's tree: sub caveats multiply no allowance", async () => {
    await withKernel({}, async (t) => {
      const ws1: Right = { ops: ["storage.write"], targets: ["obj://ws1/**"] };
      const alloc: Right = { ops: ["resource.alloc"], targets: ["persona://alice/**"] };
      const a = await t.persona(
        "alice",
        [ws1, alloc, { ops: ["persona.register", "token.mint"], targets: ["persona://alice/**"] }],
        {
          limits: { "storage.bytes": 3000, gpu: 2 },
        },
      );
      const c = await t.connect(a.identity, [a.token]);
      // Each object costs its body, its path's bytes and its row's 512: 1414 of alice's 3000 here.
      await c.storage.write("obj://ws1/a0", "x".repeat(900));
      await c.call("resource.alloc", "persona://alice", { resource: "gpu", amount: 2 });
      // Two helpers, each handed alice's own token narrowed to it: each would have a fresh 3000 and 2.
      for (const id of ["alice/h1", "alice/h2"]) {
        const helper = generateIdentity(id);
        await c.personas.register(id, helper.publicKey);
        const h = await t.connect(helper, [narrowTo(a.token, id)]);
        assert.equal(await outcome(h.storage.write(`obj://ws1/${id.slice(6)}`, "x".repeat(1500))), "RESOURCE", id);
        assert.equal(await outcome(h.call("resource.alloc", `persona://${id}`, { resource: "gpu", amount: 1 })), "RESOURCE", id);
        // What is left of alice's allowance is still theirs.
        assert.equal(await outcome(h.storage.write(`obj://ws1/${id.slice(6)}`, "x".repeat(40))), "ok", id);
        // ...and a token minted from the narrowed one is held there too.
        const m = await h.tokens.mint(id, { rights: [ws1, alloc], ttlMs: 600_000, limits: { "storage.bytes": 3000, gpu: 2 } });
        const hm = await t.connect(helper, [m.token]);
        assert.equal(await outcome(hm.storage.write(`obj://ws1/${id.slice(6)}m`, "x".repeat(1500))), "RESOURCE", id);
        await hm.close();
        await h.close();
      }
      assert.equal(await outcome(c.storage.write("obj://ws1/a1", "x".repeat(30))), "RESOURCE");
    });
  });

  it("a handle bound (at ATTEST or by token.bind) to a token whose key is then retired is refused, as the token inline is; so is its subscription", async () => {
    let now = Date.now();
    await withKernel({ clock: () => now }, async (t) => {
      const a = await t.persona("kit", [
        { ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] },
        { ops: ["event.subscribe", "event.emit"], targets: ["topic://kit/**"] },
      ]);
      const oldKid = decodeToken(a.token).claims.kid;
      const c = await t.connect(a.identity, [a.token]);
      const bound = (await c.call("token.bind", `token://${a.id}`, { token: a.token })).payload as { handle: number };
      await c.storage.write("obj://ws1/kit", "bound before the retirement");
      const ended = new Promise<string | undefined>((resolve) =>
        c.on("event", (e: { ended?: string }) => {
          if (e.ended !== undefined) resolve(e.ended);
        }),
      );
      await c.call("event.subscribe", "topic://kit/**", {});
      // Another persona under a current key emits after the retirement.
      RootKeys.rotate(t.home);
      now += 1100; // the kernel re-reads the key file at most once a second, by its clock
      const b = await t.persona("kat", [{ ops: ["event.emit"], targets: ["topic://kit/**"] }]);
      RootKeys.retire(t.home, oldKid);
      now += 1100;
      await assert.rejects(c.storage.read("obj://ws1/kit"), klass("CAPABILITY"));
      await assert.rejects(c.storage.read("obj://ws1/kit", { caps: [bound.handle] }), klass("CAPABILITY"));
      await assert.rejects(c.storage.read("obj://ws1/kit", { caps: [a.token] }), klass("CAPABILITY"));
      const e = await t.connect(b.identity, [b.token]);
      await e.call("event.emit", "topic://kit/x", { data: 1 });
      assert.match((await ended) ?? "", /retired key/);
    });
  });

  it("a rotation, a key file replaced by someone with the home, and a damaged one are on the record (token.keys); a start names the keys it found", async () => {
    let now = Date.now();
    await withKernel({ clock: () => now }, async (t) => {
      const keysOf = () => t.k.inspect.queryAudit({ op: "token.keys", limit: 100 }).map((r) => JSON.parse(r.detail ?? "{}"));
      const first = RootKeys.load(t.home, false).current;
      const start = t.k.inspect.queryAudit({ op: "kernel.start", limit: 10 }).at(-1);
      assert.deepEqual(JSON.parse(start?.detail ?? "{}").keys, { current: first, keys: 1, retired: 0 });
      const admin = await t.admin();
      // The operator rotates (kpip token rotate-key): the kernel's next read of the file is on the record.
      const second = RootKeys.rotate(t.home);
      now += 1100; // the kernel re-reads the key file at most once a second, by its clock
      await admin.system.health();
      await until(() => keysOf().length === 1, 10_000, "the rotation's record");
      assert.deepEqual(keysOf()[0], {
        current: second,
        previous: first,
        added: [second],
        retired: [],
        removed: [],
        replaced: [],
        keys: 2,
      });
      // Someone who can write the home but not read the keys replaces the file with a key of theirs:
      // every token the kernel issued stops verifying, and tokens they sign would verify.
      const planted = { current: "kplanted", keys: { kplanted: { key: randomBytes(32).toString("base64url"), created: now } } };
      RootKeys.save(t.home, planted);
      now += 1100;
      await assert.rejects(admin.system.health(), klass("CAPABILITY"));
      await until(() => keysOf().length === 2, 10_000, "the replacement's record");
      assert.deepEqual(keysOf()[1], {
        current: "kplanted",
        previous: second,
        added: ["kplanted"],
        retired: [],
        removed: [first, second],
        replaced: [],
        keys: 1,
      });
      // A file that is no key file: no token verifies, and that too is on the record.
      writeFileSync(join(t.home, "token-keys.json"), "not json", { mode: 0o600 });
      now += 1100;
      await assert.rejects(admin.system.health(), klass("CAPABILITY"));
      await until(() => keysOf().length === 3, 10_000, "the damage's record");
      assert.deepEqual(keysOf()[2], { damaged: true });
    });
  });
});
