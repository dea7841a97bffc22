import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KernelServices } from "../src/kernel/compose.js";
import type { Kernel } from "../src/kernel.js";
import { removeHome, startKernel, until } from "./harness.js";

const servicesOf = (k: Kernel) => (k as unknown as { services: KernelServices }).services;

describe("an audit index the disk has no room for", () => {
  it("an index step refused room counts as nothing recorded (the uploads' rule), though the records' segment still takes appends", async () => {
    const t = await startKernel();
    let room = () => {};
    try {
      const c = await t.admin({ maxAttempts: 1 });
      await c.storage.write("obj://ws/a", Buffer.from("before"));
      const s = servicesOf(t.k);
      // SQLite may grow no more (as on a full disk: SQLITE_FULL); the segment file still has room.
      const pages = s.store.db.pragma("page_count", { simple: true }) as number;
      const max = s.store.db.pragma("max_page_count", { simple: true }) as number;
      room = () => s.store.db.pragma(`max_page_count = ${max}`);
      s.store.db.pragma(`max_page_count = ${pages}`);
      // A write refused (its rows find no room); its records go to the segment and wait for the
      // index step, which is refused room too: to the kernel nothing can be recorded any more,
      // and the uploads holding room are failed FAIL_UPLOADS_AFTER_MS on. Told only by commits
      // (which the segment still took), the run never began.
      const refused = await c.storage.write("obj://ws/b", Buffer.alloc(64 * 1024, 7)).catch((e: Error) => e);
      assert.ok(refused instanceof Error, "refused: SQLite has no room");
      // Each refused write's records and dedupe row wait for the index; once they need a page, it is refused.
      let n = 0;
      await until(
        async () => {
          await c.storage.write(`obj://ws/c${n++}`, Buffer.alloc(2048, 9)).catch(() => {});
          return s.space.unrecordedFor() > 0;
        },
        60_000,
        "the index step's refusal counted as nothing recorded",
      );
      assert.ok(s.space.full, "the storage's full condition is on");
    } finally {
      // Room again, so that the kernel's stop can store what it must.
      room();
      await t.stop();
      removeHome(t.home);
    }
  });
});
