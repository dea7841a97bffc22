// The top of a persona's tree, from who registered whom (resources/lineage.ts), without a kernel.
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { type Bound, countAtLimit, limitsOver, PersonaRoots } from "../src/resources/lineage.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { removeHome } from "./harness.js";

describe("PersonaRoots", () => {
  const registry = new Map<string, string | null>([
    ["admin", null],
    ["alice", null],
    ["alice/helper", "alice"],
    ["team/alice", "admin"],
    ["team/bob", null],
    ["team/alice/helper", "team/alice"],
    ["orphan/x", "alice"],
    ["carol", "admin/agent.a1"],
  ]);
  let reads = 0;
  const roots = new PersonaRoots((id) => {
    reads++;
    return registry.get(id);
  }, "admin");

  it("is the shortest prefix the operator or the admin's tree registered; agents and sub-personas lie under it", () => {
    assert.equal(roots.of("alice"), "alice");
    assert.equal(roots.of("alice/helper"), "alice");
    assert.equal(roots.of("alice/agent.w1"), "alice");
    assert.equal(roots.of("team/alice"), "team/alice");
    assert.equal(roots.of("team/bob"), "team/bob");
    assert.equal(roots.of("team/alice/helper"), "team/alice");
    assert.equal(roots.of("team/alice/agent.w1"), "team/alice");
    assert.equal(roots.of("carol"), "carol", "registered by the admin's agent: configured");
    // Under no configured prefix (an older home's, or not registered): the first segment.
    assert.equal(roots.of("orphan/x"), "orphan");
    assert.equal(roots.of("orphan/x/agent.w1"), "orphan");
    assert.equal(roots.of("nobody/here"), "nobody");
  });

  it("is read once per persona until the registry changes", () => {
    roots.of("team/alice/helper");
    const before = reads;
    for (let i = 0; i < 10; i++) roots.of("team/alice/helper");
    assert.equal(reads, before);
    registry.set("team", null);
    assert.equal(roots.of("team/alice/helper"), "team/alice", "cached until told");
    roots.changed();
    assert.equal(roots.of("team/alice/helper"), "team");
    assert.ok(reads > before);
  });
});

describe("PersonaRoots hooked to the registry's changes", () => {
  it("finds roots again after each add or removal of a persona, and after changes made elsewhere; an agent's key keeps the cache", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-roots-hook-"));
    const store = new SqliteStore(join(dir, "kernel.db"));
    try {
      let reads = 0;
      const roots = new PersonaRoots((id) => {
        reads++;
        return store.registrarOf(id);
      }, "admin");
      store.onRegistryChange((id) => roots.changed(id));
      const key = new Uint8Array(32);
      store.addPersona("team/alice", key);
      assert.equal(roots.of("team/alice/helper"), "team/alice");
      store.addPersona("team", key);
      assert.equal(roots.of("team/alice/helper"), "team", "no hand call: the add cleared the cache");
      // An agent's key (the agent manager's add and removal) moves no root: the cache stays.
      const before = reads;
      store.addPersona("team/agent.w1", key);
      store.removePersona("team/agent.w1");
      assert.equal(roots.of("team/alice/helper"), "team");
      assert.equal(reads, before);
      assert.equal(store.removePersona("team"), true);
      assert.equal(roots.of("team/alice/helper"), "team/alice", "the removal cleared it");
      // Another process on the same database: this store is told, and tells the roots.
      const other = new SqliteStore(join(dir, "kernel.db"));
      other.addPersona("team", key);
      other.close();
      assert.equal(roots.of("team/alice/helper"), "team/alice", "cached until told");
      store.registryChangedElsewhere();
      assert.equal(roots.of("team/alice/helper"), "team");
    } finally {
      store.close();
      removeHome(dir);
    }
  });
});

describe("PersonaRoots and one tree's registry changes", () => {
  it("a persona registering and removing sub-personas in its tree finds no other tree's roots again: only the roots of personas under the changed id go", () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-roots-tree-"));
    const store = new SqliteStore(join(dir, "kernel.db"));
    try {
      const asked: string[] = [];
      const roots = new PersonaRoots((id) => {
        asked.push(id);
        return store.registrarOf(id);
      }, "admin");
      store.onRegistryChange((id) => roots.changed(id));
      const key = new Uint8Array(32);
      for (const p of ["alice", "bob", "team/carol"]) store.addPersona(p, key);
      const others = ["bob", "bob/helper", "team/carol", "team/carol/agent.w1", "team/dave"];
      for (const p of [...others, "alice", "alice/helper"]) roots.of(p);
      asked.length = 0;
      // alice's churn (persona.register and persona.remove inside its own tree, any number of times).
      for (let i = 0; i < 3; i++) {
        store.addPersona("alice/sub", key, "alice");
        assert.equal(store.removePersona("alice/sub"), true);
      }
      for (const p of others) roots.of(p);
      assert.deepEqual(asked, [], "no other tree's root is looked up again");
      assert.equal(roots.of("alice"), "alice", "alice's own root is kept: its id lies above the change");
      assert.deepEqual(asked, []);
      // What lies under a changed id is found again: a root above it may have come or gone.
      store.addPersona("team", key);
      assert.equal(roots.of("team/carol"), "team", "under the added id: found again");
      assert.equal(roots.of("team/dave"), "team");
      assert.equal(roots.of("bob/helper"), "bob");
      assert.deepEqual(asked.sort(), ["team", "team"], "only the two personas under team were looked up, once each");
      assert.equal(store.removePersona("team"), true);
      assert.equal(roots.of("team/carol"), "team/carol", "the removal: found again");
      // What a change drops goes from the index by id too: nothing of it is kept.
      const under = (roots as unknown as { under: Map<string, Set<string>> }).under;
      for (const p of [...under.keys()].filter((p) => p !== "team" && !p.startsWith("team/"))) roots.changed(p);
      store.addPersona("team/x", key);
      store.removePersona("team/x");
      assert.ok(
        [...under.keys()].every((p) => p === "team" || p.startsWith("team/")),
        [...under.keys()].join(),
      );
      store.addPersona("team", key);
      assert.equal(under.size, 0, [...under.keys()].join());
    } finally {
      store.close();
      removeHome(dir);
    }
  });
});

describe("PersonaRoots' bound", () => {
  it("one tree naming ever new agents past the cache's bound does not evict another tree's roots: it replaces its own oldest", () => {
    const asked: string[] = [];
    const registry = new Map<string, string | null>([
      ["alice", null],
      ["bob", null],
      ["team/carol", null],
    ]);
    const roots = new PersonaRoots((id) => {
      asked.push(id);
      return registry.get(id);
    }, "admin");
    const others = ["bob", "bob/helper", "bob/agent.w1", "team/carol", "team/carol/agent.w1"];
    for (const p of others) roots.of(p);
    asked.length = 0;
    // alice's agents (or sub-persona ids) come and go: each is one more persona to find a root for.
    for (let i = 0; i < 25_000; i++) assert.equal(roots.of(`alice/agent.a${i}`), "alice");
    asked.length = 0;
    for (const p of others) roots.of(p);
    assert.deepEqual(asked, [], "no other tree's root was forgotten");
    // alice holds its share, no more, and the index by id forgets what the cache forgot.
    const under = (roots as unknown as { under: Map<string, Set<string>> }).under;
    assert.ok((under.get("alice")?.size ?? 0) <= 2_500, String(under.get("alice")?.size));
    assert.ok(under.size <= 2_500 + 1 + others.length + 1, String(under.size));
    roots.of("alice/agent.a24999");
    assert.deepEqual(asked, [], "alice's newest are kept");
    roots.of("alice/agent.a0");
    assert.deepEqual(asked, ["alice"], "alice's oldest went");
  });
});

describe("limitsOver / countAtLimit", () => {
  const grant = { subject: "alice", limits: { concurrent: 2 } } as unknown as Parameters<typeof limitsOver>[1];
  const bounds: Bound[] = [
    { persona: "alice", limits: { concurrent: 1, agents: 3 } },
    { persona: "bob", limits: { concurrent: 0 } },
  ];

  it("the grant's limit over its subject's tree, then each bound over a tree the requester lies in", () => {
    assert.deepEqual(limitsOver("alice/agent.w1", grant, bounds, "concurrent"), [
      ["alice", 2],
      ["alice", 1],
    ]);
    assert.deepEqual(limitsOver("alice", undefined, bounds, "agents"), [["alice", 3]]);
    assert.equal(limitsOver("alice", undefined, [], "concurrent").length, 0);
  });

  it("names the first limit one more would pass", () => {
    const counts = new Map([["alice", 1]]);
    const n = (s: string) => counts.get(s) ?? 0;
    assert.deepEqual(countAtLimit("alice/agent.w1", grant, bounds, "concurrent", n), { scope: "alice", n: 1, limit: 1 });
    assert.equal(countAtLimit("alice/agent.w1", grant, [], "concurrent", n), undefined);
  });
});
