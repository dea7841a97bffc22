import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { KernelClient } from "@kpip/client";
import { decodeToken } from "@kpip/protocol";
import type { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { ErrorCode, ResourceUpdatedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import { KernelHome, mcpError, stdioHost, until } from "./harness.js";

type Files = { identityFile: string; tokenFile: string };

/** The host's notifications/resources/updated, in arrival order. */
function updates(host: Client): { uri: string; generation: unknown; kind: unknown }[] {
  const got: { uri: string; generation: unknown; kind: unknown }[] = [];
  host.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
    const m = (n.params._meta ?? {}) as Record<string, unknown>;
    got.push({ uri: n.params.uri, generation: m["kpip/generation"], kind: m["kpip/kind"] });
  });
  return got;
}

const READER = (ws: string) => [
  { ops: ["system.describe"], targets: ["kernel://"] },
  { ops: ["storage.read", "storage.list"], targets: [`obj://${ws}/**`] },
];

describe("MCP resource subscriptions backed by kernel storage watches", () => {
  const k = new KernelHome({ maxSubscriptionsPerSession: 4 });
  let alice: Client;
  let carol: Client;
  let carolFiles: Files;
  let bobFiles: Files;
  before(async () => {
    await k.start();
    // alice and carol are MCP hosts reading their own workspaces; bob writes both.
    alice = await stdioHost(k, await k.persona("alice", READER("ws1")));
    carolFiles = await k.persona("carol", READER("ws2"));
    carol = await stdioHost(k, carolFiles);
    bobFiles = await k.persona("bob", [{ ops: ["storage.write", "storage.delete"], targets: ["obj://ws1/**", "obj://ws2/**"] }]);
  });
  after(async () => {
    await alice?.close().catch(() => {});
    await carol?.close().catch(() => {});
    await k.dispose();
  });

  /** bob, on a session of his own. */
  async function bob<T>(f: (c: KernelClient) => Promise<T>): Promise<T> {
    const c = await KernelClient.connect({
      socket: join(k.home, "kernel.sock"),
      identity: bobFiles.identityFile,
      tokens: [readFileSync(bobFiles.tokenFile, "utf8")],
      reconnect: false,
    });
    try {
      return await f(c);
    } finally {
      await c.close();
    }
  }

  it("sends notifications/resources/updated when another persona writes or deletes the object", async () => {
    const got = updates(alice);
    await bob((c) => c.storage.write("obj://ws1/notes/a", "v1"));
    await alice.subscribeResource({ uri: "obj://ws1/notes/a" });
    const w = await bob((c) => c.storage.write("obj://ws1/notes/a", "v2"));
    await until(() => got.length >= 1, 30_000, "the update of the write");
    assert.deepEqual(got[0], { uri: "obj://ws1/notes/a", generation: w.generation, kind: "write" });
    // The host reads what changed through the same door.
    const read = await alice.readResource({ uri: "obj://ws1/notes/a" });
    assert.deepEqual(
      read.contents.map((c) => ("text" in c ? c.text : null)),
      ["v2"],
    );
    const d = await bob((c) => c.storage.delete("obj://ws1/notes/a"));
    await until(() => got.length >= 2, 30_000, "the update of the delete");
    assert.deepEqual(got[1], { uri: "obj://ws1/notes/a", generation: d.generation, kind: "delete" });
    // Unsubscribed: a later write is not told (a write to another subscribed object is, after it).
    await alice.subscribeResource({ uri: "obj://ws1/notes/b" });
    await alice.unsubscribeResource({ uri: "obj://ws1/notes/a" });
    await bob(async (c) => {
      await c.storage.write("obj://ws1/notes/a", "v3");
      await c.storage.write("obj://ws1/notes/b", "b");
    });
    await until(() => got.length >= 3, 30_000, "the update of notes/b");
    assert.deepEqual(
      got.map((u) => u.uri),
      ["obj://ws1/notes/a", "obj://ws1/notes/a", "obj://ws1/notes/b"],
    );
    await alice.unsubscribeResource({ uri: "obj://ws1/notes/b" });
  });

  it("refuses a subscription to an object the persona cannot read, and tells it nothing of other workspaces", async () => {
    const got = updates(carol);
    const e = await mcpError(carol.subscribeResource({ uri: "obj://ws1/notes/a" }));
    assert.equal(e.code, ErrorCode.InvalidParams);
    assert.match(e.message, /PERMISSION: no capability of this request grants storage\.watch on obj:\/\/ws1\/notes\/a/);
    // Patterns and other schemes are not resources.
    const pattern = await mcpError(carol.subscribeResource({ uri: "obj://ws2/**" }));
    assert.match(pattern.message, /only an object's obj:\/\/ URI/);
    const other = await mcpError(carol.subscribeResource({ uri: "topic://ws1/x" }));
    assert.match(other.message, /only an object's obj:\/\/ URI/);
    await carol.subscribeResource({ uri: "obj://ws2/mine" });
    // alice's workspace changes first; carol hears only of her own object.
    await bob(async (c) => {
      await c.storage.write("obj://ws1/notes/a", "alice's");
      await c.storage.write("obj://ws1/notes/c", "alice's");
      await c.storage.write("obj://ws2/mine", "carol's");
    });
    await until(() => got.length >= 1, 30_000, "carol's update");
    assert.deepEqual(
      got.map((u) => u.uri),
      ["obj://ws2/mine"],
    );
    await carol.unsubscribeResource({ uri: "obj://ws2/mine" });
  });

  it("refuses subscriptions past the kernel's bound; a repeated subscription holds no second watch", async () => {
    // maxSubscriptionsPerSession is 4 in this kernel: the gateway's session holds the watches.
    for (let i = 0; i < 4; i++) await carol.subscribeResource({ uri: `obj://ws2/many/${i}` });
    await carol.subscribeResource({ uri: "obj://ws2/many/0" });
    const e = await mcpError(carol.subscribeResource({ uri: "obj://ws2/many/4" }));
    assert.match(e.message, /RESOURCE: .*maxSubscriptionsPerSession/);
    await carol.unsubscribeResource({ uri: "obj://ws2/many/0" });
    await carol.subscribeResource({ uri: "obj://ws2/many/4" });
    for (let i = 1; i < 5; i++) await carol.unsubscribeResource({ uri: `obj://ws2/many/${i}` });
  });

  it("kpip mcp --max-subscriptions bounds the watches one host session holds: one more is HOST_BUSY before the kernel is asked", async () => {
    const host = await stdioHost(k, carolFiles, ["--max-subscriptions", "2"]);
    try {
      await host.subscribeResource({ uri: "obj://ws2/own/0" });
      await host.subscribeResource({ uri: "obj://ws2/own/1" });
      const e = await mcpError(host.subscribeResource({ uri: "obj://ws2/own/2" }));
      assert.equal(e.code, -32029);
      assert.match(e.message, /holds 2 subscriptions \(the gateway's limit is 2\)/);
      const watched = (await k.audit("carol")).filter((r) => r.op === "storage.watch").map((r) => r.target);
      assert.ok(watched.includes("obj://ws2/own/1") && !watched.includes("obj://ws2/own/2"), watched.join(", "));
      await host.unsubscribeResource({ uri: "obj://ws2/own/0" });
      await host.subscribeResource({ uri: "obj://ws2/own/2" });
    } finally {
      await host.close();
    }
  });

  it("offers watches as resources/subscribe, not as tools, even when the token grants storage.*", async () => {
    const dave = await stdioHost(
      k,
      await k.persona("dave", [
        { ops: ["system.describe"], targets: ["kernel://"] },
        { ops: ["storage.*"], targets: ["obj://ws3/**"] },
      ]),
    );
    try {
      const names = (await dave.listTools()).tools.map((t) => t.name);
      assert.ok(names.includes("storage_read") && names.includes("storage_write"), names.join(", "));
      assert.ok(!names.includes("storage_watch") && !names.includes("storage_unwatch"), names.join(", "));
      assert.equal(dave.getServerCapabilities()?.resources?.subscribe, true);
    } finally {
      await dave.close();
    }
  });

  it("lists an op by the name the kernel authorizes it as: upload tools follow storage.write, not their own names", async () => {
    const erin = await stdioHost(
      k,
      await k.persona("erin", [
        { ops: ["system.describe"], targets: ["kernel://"] },
        // Names the upload ops but not storage.write: the kernel refuses every upload of this token.
        { ops: ["storage.upload.*", "storage.read"], targets: ["obj://ws3/**"] },
      ]),
    );
    try {
      const names = (await erin.listTools()).tools.map((t) => t.name);
      assert.ok(names.includes("storage_read"), names.join(", "));
      assert.ok(!names.some((n) => n.startsWith("storage_upload")), names.join(", "));
      const e = await mcpError(erin.callTool({ name: "storage_upload_begin", arguments: { target: "obj://ws3/x", args: {} } }));
      assert.equal(e.code, ErrorCode.InvalidParams, "an unlisted tool is not called");
    } finally {
      await erin.close();
    }
  });

  it("keeps subscriptions across a kernel restart", async () => {
    const got = updates(alice);
    await alice.subscribeResource({ uri: "obj://ws1/restart" });
    await k.kill();
    await k.start();
    // The gateway reconnects and watches again on its own; until it has, a write is not told
    // (changes while away are not replayed), so bob writes until alice hears of one.
    let n = 0;
    await until(
      async () => {
        await bob((c) => c.storage.write("obj://ws1/restart", `after restart ${++n}`)).catch(() => {});
        return got.some((u) => u.uri === "obj://ws1/restart");
      },
      60_000,
      "an update after the restart",
    );
  });
  it("a watch the kernel ends (the host's token revoked) is told to the host once, with kpip/ended: it reads again and learns why", async () => {
    const files = await k.persona("gail", READER("ws3"));
    const gail = await stdioHost(k, files);
    try {
      const got: Record<string, unknown>[] = [];
      gail.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
        got.push({ uri: n.params.uri, ...((n.params._meta ?? {}) as Record<string, unknown>) });
      });
      await gail.subscribeResource({ uri: "obj://ws3/watched" });
      const admin = await KernelClient.connect({
        socket: join(k.home, "kernel.sock"),
        identity: join(k.home, "admin.identity"),
        tokens: [readFileSync(join(k.home, "admin.token"), "utf8")],
        reconnect: false,
      });
      try {
        const id = decodeToken(Buffer.from(readFileSync(files.tokenFile, "utf8").trim(), "base64url")).claims.id;
        await admin.call("token.revoke", `token://${id}`);
        // The next change ends the watch (its authority is checked before each delivery).
        await admin.storage.write("obj://ws3/watched", "after");
      } finally {
        await admin.close();
      }
      await until(() => got.some((g) => g["kpip/ended"] === true), 30_000, "the end of the watch told");
      assert.deepEqual(
        got.filter((g) => g["kpip/ended"] === true),
        [{ uri: "obj://ws3/watched", "kpip/ended": true }],
      );
      const e = await mcpError(gail.readResource({ uri: "obj://ws3/watched" }));
      assert.match(e.message, /revoked|CAPABILITY/);
    } finally {
      await gail.close().catch(() => {});
    }
  });
});
