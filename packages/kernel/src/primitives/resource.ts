import { resourceAlloc, resourceFree, resourceQuery } from "@kpip/protocol";
import type { ResourceLedger } from "../resources/ledger.js";
import { personaScope, workspaceScope } from "../resources/ledger.js";
import { inTree, type TreeRoots, treeBoundRefusal } from "../resources/lineage.js";
import type { LedgerStore } from "../store/types.js";
import { implement } from "./implement.js";
import { OpError, type OpResult, type PrimitiveFamily } from "./types.js";

/** What bounds the allocations' rows: the store that holds them, and how many one persona tree may hold. */
export interface AllocationRows {
  store: Pick<LedgerStore, "countAllocationsWithin">;
  /** The top of a persona's tree (the registry's, kernel/compose.ts). */
  roots: TreeRoots;
  /** maxAllocationsPerPersona. */
  max: number;
  /** The kernel's admin persona: it alone queries any persona's usage. */
  admin: string;
}

/** resource.alloc / free / query against the ledger. */
export function resourceFamily(
  ledger: ResourceLedger,
  quotas: { workspaceStorageBytes: number },
  rows: AllocationRows,
): PrimitiveFamily {
  return {
    name: "resource",
    ops: [
      implement(resourceAlloc, {
        owns: (ctx) => ctx.target.segments.join("/") === ctx.persona || "a persona allocates for itself only",
        handler: (ctx) => {
          const resource = ctx.args.resource;
          if (!/^[a-z][a-z0-9_.]{0,63}$/.test(resource) || resource === "storage.bytes") {
            throw new OpError(
              "SEMANTIC",
              "resource must be a lowercase name other than storage.bytes (counted by storage itself)",
            );
          }
          return ctx.atomically((): OpResult => {
            // Each allocation is a row, whether or not any limit names its resource: a persona's
            // whole tree holds a bounded number (its sub-personas and agents do not multiply it).
            const root = rows.roots.of(ctx.persona);
            const held = rows.store.countAllocationsWithin(root);
            if (held >= rows.max)
              throw new OpError(
                "RESOURCE",
                `${treeBoundRefusal(root, ctx.persona, {
                  held: (max, bound) => `holds ${held} allocations (${bound} ${max})`,
                  what: "allocations",
                  bound: "maxAllocationsPerPersona",
                  limit: rows.max,
                })}; free one first`,
              );
            const a = ledger.alloc(ctx.persona, resource, ctx.args.amount, ctx.grant);
            return { status: "SUCCESS", payload: { allocation: a.id, resource, amount: a.amount }, audit: { allocation: a.id } };
          });
        },
      }),
      implement(resourceFree, {
        // The target says whose allocations may be freed (the grant covered it): the caller's own
        // tree only, and then only an allocation of the target or a persona under it.
        owns: (ctx) => {
          const p = ctx.target.segments.join("/");
          return inTree(p, ctx.persona) || `a persona frees allocations of its own tree only: ${p} is not under ${ctx.persona}`;
        },
        handler: (ctx) => {
          return ctx.atomically((): OpResult => {
            // A name no longer in use leaves no usage rows (the ledger's store drops a row at 0).
            const a = ledger.free(ctx.target.segments.join("/"), ctx.args.allocation);
            return { status: "SUCCESS", payload: { freed: a.id, resource: a.resource, amount: a.amount } };
          });
        },
      }),
      implement(resourceQuery, {
        // A persona's usage and requests in flight are its tree's business: a persona other than
        // the admin persona itself (its sub-personas and agents included) queries personas of its
        // own tree only, as it registers and removes them.
        owns: (ctx) => {
          if (ctx.target.scheme !== "persona" || ctx.persona === rows.admin) return true;
          const p = ctx.target.segments.join("/");
          const root = rows.roots.of(ctx.persona);
          return inTree(p, root) || `${ctx.persona} queries personas under ${root} only (its tree): ${p} is not in it`;
        },
        handler: (ctx): OpResult => {
          if (ctx.target.scheme === "obj") {
            // The answer is the whole workspace's: asked through an object's address, a grant over
            // that object alone would show what every other persona keeps there.
            if (ctx.target.segments.length !== 1)
              throw new OpError("SEMANTIC", `resource.query takes a workspace, obj://<ws>, not an object: ${ctx.targetUri}`);
            const ws = ctx.target.segments[0] as string;
            return {
              status: "SUCCESS",
              payload: {
                workspace: ws,
                usage: ledger.usage(workspaceScope(ws)),
                quotas: { "storage.bytes": quotas.workspaceStorageBytes },
              },
            };
          }
          const p = ctx.target.segments.join("/");
          return {
            status: "SUCCESS",
            payload: {
              persona: p,
              usage: ledger.usage(personaScope(p)),
              limits: ctx.grant?.limits ?? {},
              inFlight: ledger.inFlightOf(p),
            },
          };
        },
      }),
    ],
  };
}
