import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { generateIdentity } from "@kpip/protocol";
import { addPersonaKey, kernelForSuite, klass } from "./harness.js";

/**
 * token.bind has no ownership rule of its own (PROTOCOL §13.1, Ownership): it binds only a token
 * the caller could use inline (Use: the caller is its subject or under it), so a handle carries
 * no authority the bytes did not. Binding a parent's token is using it; binding a sibling's or a
 * child's token — whatever the caller owns or its rights over token://** — is refused as the
 * bytes inline are.
 */
describe("token.bind scope", () => {
  const k = kernelForSuite();

  it("a sub-persona binds its parent's token as it could send it inline; a sibling's or child's token is refused CAPABILITY, as inline", async () => {
    const { t } = k;
    const ws = [{ ops: ["storage.read", "storage.write"], targets: ["obj://ws1/**"] }];
    const alice = await t.persona("alice", [...ws, { ops: ["token.bind"], targets: ["token://**"] }]);
    const bob = await t.persona("bob", ws);
    const botId = generateIdentity("alice/bot");
    addPersonaKey(t, "alice/bot", botId.publicKey);
    const botTok = await k.admin.tokens.mint("alice/bot", {
      rights: [{ ops: ["token.bind", "storage.read"], targets: ["token://**", "obj://ws1/bot/**"] }],
      ttlMs: 60_000,
    });
    const bot = await t.connect(botId, [botTok.token]);

    // Inline, alice's token already acts for alice/bot (Use): binding it widens nothing.
    await bot.storage.write("obj://ws1/by-bot-inline", "x", { caps: [alice.token] });
    const h = (await bot.call("token.bind", `token://${alice.id}`, { token: alice.token })).payload as { handle: number };
    await bot.storage.write("obj://ws1/by-bot-bound", "x", { caps: [h.handle] });
    // Nor by presenting it (a token always allows token.bind on itself).
    const h2 = await bot.call("token.bind", `token://${alice.id}`, { token: alice.token }, { caps: [alice.token] });
    assert.equal(typeof (h2.payload as { handle: number }).handle, "number");

    // A sibling's token: not usable by alice/bot inline, nor bindable though its rights cover token://**.
    await assert.rejects(bot.storage.read("obj://ws1/x", { caps: [bob.token] }), klass("CAPABILITY"));
    await assert.rejects(bot.call("token.bind", `token://${bob.id}`, { token: bob.token }), klass("CAPABILITY"));

    // A child's token: alice owns it (she may inspect or revoke it) but cannot act as it, so cannot bind it.
    const a = await t.connect(alice.identity, [alice.token]);
    await assert.rejects(a.storage.read("obj://ws1/bot/x", { caps: [botTok.token] }), klass("CAPABILITY"));
    await assert.rejects(a.call("token.bind", `token://${botTok.id}`, { token: botTok.token }), klass("CAPABILITY"));
  });
});
