// Uploads in progress are declared at no cost and held for uploadIdleMs (a byte a chunk renews
// them): a few trees must not hold the kernel's whole allowance of them, and the admin — who must
// be able to act in an incident — keeps the last adminReserve of them, as of sessions and agents.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KernelClient } from "@kpip/client";
import { klass, type TestKernel, withKernel } from "./harness.js";
import { SMALL_FRAMES } from "./storage-files.js";

async function writer(t: TestKernel, id: string): Promise<KernelClient> {
  const p = await t.persona(id, [{ ops: ["storage.write"], targets: [`obj://${id}/**`] }]);
  return t.connect(p.identity, [p.token]);
}

const begin = (c: KernelClient, target: string, size: number) => c.call("storage.upload.begin", target, { size });

describe("uploads in progress: the admin's reserve", () => {
  it("four trees declaring their share of maxUploadBytes and sending nothing leave the admin its reserve of the bytes", async () => {
    // 16 uploads, 4 of them the admin's: a quarter of the 400 bytes (100) is the admin's too.
    const bounds = { ...SMALL_FRAMES, maxUploadBytes: 400, maxUploadBytesPerPersona: 100, maxUploads: 16, adminReserve: 4 };
    await withKernel(bounds, async (t) => {
      const trees = [await writer(t, "p1"), await writer(t, "p2"), await writer(t, "p3"), await writer(t, "p4")];
      for (const [i, c] of trees.slice(0, 3).entries()) await begin(c, `obj://p${i + 1}/big`, 100);
      // The fourth tree's share would take the bytes kept for the admin.
      const p4 = trees[3] as KernelClient;
      await assert.rejects(begin(p4, "obj://p4/big", 100), klass("RESOURCE", "reserved for the admin"));
      await assert.rejects(begin(p4, "obj://p4/one", 1), klass("RESOURCE", "reserved for the admin"));
      // The admin still uploads, beyond a tree's share if it wants (exempt), up to the kernel's bound.
      const admin = await t.admin();
      const { upload } = (await begin(admin, "obj://adm/x", 100)).payload as { upload: string };
      await assert.rejects(begin(admin, "obj://adm/y", 1), klass("RESOURCE", "would pass the kernel's 400"));
      const data = Buffer.alloc(100, 7);
      await admin.call("storage.upload.chunk", "obj://adm/x", { upload, offset: 0, data });
    });
  });

  it("trees holding their share of maxUploads leave the admin the last adminReserve uploads", async () => {
    await withKernel({ ...SMALL_FRAMES, maxUploads: 6, maxUploadsPerPersona: 2, adminReserve: 2 }, async (t) => {
      const alice = await writer(t, "alice");
      const bob = await writer(t, "bob");
      for (const [c, id] of [
        [alice, "alice"],
        [bob, "bob"],
      ] as const)
        for (const n of ["a", "b"]) await begin(c, `obj://${id}/${n}`, 10);
      const carol = await writer(t, "carol");
      await assert.rejects(begin(carol, "obj://carol/a", 10), klass("RESOURCE", "reserved for the admin"));
      const admin = await t.admin();
      await begin(admin, "obj://adm/a", 10);
      await begin(admin, "obj://adm/b", 10);
      await assert.rejects(begin(admin, "obj://adm/c", 10), klass("RESOURCE", "already has 6 uploads in progress"));
    });
  });
});
