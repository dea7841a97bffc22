// A removal's cascade through registrations never takes the kernel's admin persona (review, wt-review11).
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { generateIdentity } from "@kpip/protocol";
import { registrationsOf, removePersonaTree } from "../src/primitives/persona.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { removeHome } from "./harness.js";

/** ann/helper registered ann/boss (then made the kernel's admin persona by the operator's configuration), which registered ann/boss-aide. */
function registry() {
  const dir = mkdtempSync(join(tmpdir(), "kpip-spare-admin-"));
  const store = new SqliteStore(join(dir, "kernel.db"));
  const add = (id: string, by?: string) =>
    store.withJournal({ actor: "test", op: "persona.register", target: `persona://${id}`, message: "" }, () =>
      store.addPersona(id, generateIdentity(id).publicKey, by),
    );
  add("ann");
  add("ann/helper", "ann");
  add("ann/boss", "ann/helper");
  add("ann/boss-aide", "ann/boss");
  add("ann/spare", "ann/helper");
  return { dir, store };
}

const remove = (store: SqliteStore, id: string, admin?: string) =>
  store.withJournal({ actor: "test", op: "persona.remove", target: `persona://${id}`, message: "" }, () =>
    removePersonaTree(store, id, () => {}, undefined, admin),
  );

describe("a removal's cascade spares the admin persona", () => {
  it("removing the persona that registered the admin persona takes its other registrations, never the admin nor what the admin registered", () => {
    const { dir, store } = registry();
    try {
      // At an agent's end (registrationsOf) as at a removal: what it registered goes, the admin persona never.
      assert.deepEqual(registrationsOf(store, "ann/helper", undefined, "ann/boss"), ["ann/spare"]);
      assert.deepEqual(registrationsOf(store, "ann/helper", undefined, undefined).sort(), [
        "ann/boss",
        "ann/boss-aide",
        "ann/spare",
      ]);
      const r = remove(store, "ann/helper", "ann/boss");
      assert.deepEqual(r.removed.sort(), ["ann/helper", "ann/spare"]);
      for (const kept of ["ann", "ann/boss", "ann/boss-aide"]) assert.ok(store.getPersona(kept), `${kept} stays`);
    } finally {
      store.close();
      removeHome(dir);
    }
  });

  it("without an admin to spare (the operator's tooling naming none), the same cascade reaches it: what the guard is for", () => {
    const { dir, store } = registry();
    try {
      const r = remove(store, "ann/helper");
      assert.deepEqual(r.removed.sort(), ["ann/boss", "ann/boss-aide", "ann/helper", "ann/spare"]);
    } finally {
      store.close();
      removeHome(dir);
    }
  });
});
