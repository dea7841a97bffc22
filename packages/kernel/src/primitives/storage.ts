import type { CborValue } from "@kpip/protocol";
import type { ResourceLedger } from "../resources/ledger.js";
import type { ObjectStore } from "../store/types.js";
import { type OpContext, OpError, type OpResult, type PrimitiveFamily } from "./types.js";

export interface StorageLimits {
  /** Largest object, in bytes. */
  maxObjectBytes: number;
  /** Most entries one storage.list page returns. */
  maxListPage: number;
}

/** An object address: obj://<workspace>/<path>. The target grammar already forbids ".", "..", empty segments and percent-encoding. */
function objectAddress(ctx: OpContext, allowWorkspaceOnly = false): { workspace: string; path: string } {
  const [workspace, ...rest] = ctx.target.segments;
  if (rest.some((s) => s === "*" || s === "**")) throw new OpError("SEMANTIC", `${ctx.op} takes an object name, not a pattern`);
  if (rest.length === 0 && !allowWorkspaceOnly) throw new OpError("SEMANTIC", `${ctx.op} needs obj://<workspace>/<path>`);
  return { workspace: workspace as string, path: rest.join("/") };
}

function dataArg(ctx: OpContext): Uint8Array {
  const d = ctx.args.data;
  if (d instanceof Uint8Array) return d;
  if (typeof d === "string") return Buffer.from(d, "utf8");
  throw new OpError("SEMANTIC", "storage.write needs argument data (bytes or text)");
}

function generationArg(ctx: OpContext): number | undefined {
  const g = ctx.args.ifGeneration;
  return g === undefined || g === null ? undefined : (g as number);
}

/** storage.write/read/stat/list/delete on obj://<workspace>/<path>, durable in the object store. */
export function storageFamily(store: ObjectStore, limits: StorageLimits, ledger: ResourceLedger): PrimitiveFamily {
  return {
    name: "storage",
    ops: [
      {
        op: "storage.write",
        description: "Write an object. ifGeneration: 0 = only if absent, n = only if at generation n.",
        targets: ["obj"],
        args: {
          data: { type: "any", required: true, description: "the object's bytes (or UTF-8 text)" },
          ifGeneration: { type: "uint", description: "compare-and-set: the generation the object must have now" },
        },
        idempotent: false,
        effects: true,
        handler: (ctx) => {
          const { workspace, path } = objectAddress(ctx);
          const data = dataArg(ctx);
          if (data.length > limits.maxObjectBytes) {
            throw new OpError("RESOURCE", `object of ${data.length} bytes exceeds the limit of ${limits.maxObjectBytes}`);
          }
          // The object, its owner's usage and the request's dedupe record change in one
          // transaction: a refused charge leaves no write, a crash no write without its record.
          return ctx.atomically((): OpResult => {
            const w = store.writeObject(workspace, path, data, generationArg(ctx), Date.now(), ctx.persona);
            if (!w.ok) throw new OpError("SEMANTIC", `generation conflict: ${ctx.targetUri} is at generation ${w.current}`);
            ledger.chargeStorage(ctx.persona, workspace, w.previous, data.length, ctx.grant);
            return {
              status: "SUCCESS",
              payload: { generation: w.generation, size: data.length },
              audit: { generation: w.generation, size: data.length },
            };
          });
        },
      },
      {
        op: "storage.read",
        description: "Read an object's bytes and generation.",
        targets: ["obj"],
        args: {},
        idempotent: true,
        effects: false,
        handler: (ctx) => {
          const { workspace, path } = objectAddress(ctx);
          const o = store.readObject(workspace, path);
          if (!o) throw new OpError("SEMANTIC", `no object at ${ctx.targetUri}`);
          return { status: "SUCCESS", payload: { data: o.data, generation: o.generation, size: o.size } };
        },
      },
      {
        op: "storage.stat",
        description: "An object's size, generation and last update time.",
        targets: ["obj"],
        args: {},
        idempotent: true,
        effects: false,
        handler: (ctx) => {
          const { workspace, path } = objectAddress(ctx);
          const o = store.statObject(workspace, path);
          if (!o) throw new OpError("SEMANTIC", `no object at ${ctx.targetUri}`);
          return { status: "SUCCESS", payload: { generation: o.generation, size: o.size, updatedAt: o.updatedAt } };
        },
      },
      {
        op: "storage.list",
        description: "List objects under obj://<workspace>[/<prefix>] in path order; PARTIAL with a cursor when more remain.",
        targets: ["obj"],
        args: {
          cursor: { type: "text", description: "the cursor of the previous page" },
          limit: { type: "uint", description: `entries per page (default 100, at most ${limits.maxListPage})` },
        },
        idempotent: true,
        effects: false,
        handler: (ctx) => {
          const { workspace, path } = objectAddress(ctx, true);
          const prefix = path === "" ? "" : `${path}/`;
          const limit = Math.min(Math.max((ctx.args.limit as number | undefined) ?? 100, 1), limits.maxListPage);
          const cursor = ctx.args.cursor as string | undefined;
          if (cursor !== undefined && !cursor.startsWith(prefix))
            throw new OpError("SEMANTIC", "cursor does not belong to this listing");
          const rows = store.listObjects(workspace, prefix, cursor, limit + 1);
          const more = rows.length > limit;
          const page = more ? rows.slice(0, limit) : rows;
          const payload: Record<string, CborValue> = {
            items: page.map((o) => ({ path: o.path, size: o.size, generation: o.generation })),
          };
          if (more) payload.cursor = page[page.length - 1]?.path as string;
          return { status: more ? "PARTIAL" : "SUCCESS", payload };
        },
      },
      {
        op: "storage.delete",
        description: "Delete an object, optionally only if at generation ifGeneration.",
        targets: ["obj"],
        args: { ifGeneration: { type: "uint", description: "compare-and-set: the generation the object must have now" } },
        idempotent: false,
        effects: true,
        handler: (ctx) => {
          const { workspace, path } = objectAddress(ctx);
          return ctx.atomically((): OpResult => {
            const d = store.deleteObject(workspace, path, generationArg(ctx));
            if (d === undefined) throw new OpError("SEMANTIC", `no object at ${ctx.targetUri}`);
            if (!d.ok) throw new OpError("SEMANTIC", `generation conflict: ${ctx.targetUri} is at generation ${d.current}`);
            if (d.previous) ledger.releaseStorage(workspace, d.previous);
            return {
              status: "SUCCESS",
              payload: { deleted: true, generation: d.generation },
              audit: { generation: d.generation },
            };
          });
        },
      },
    ],
  };
}
