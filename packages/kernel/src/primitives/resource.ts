import type { ResourceLedger } from "../resources/ledger.js";
import { personaScope, workspaceScope } from "../resources/ledger.js";
import { OpError, type OpResult, type PrimitiveFamily } from "./types.js";

/** resource.alloc / free / query against the ledger. */
export function resourceFamily(ledger: ResourceLedger, quotas: { workspaceStorageBytes: number }): PrimitiveFamily {
  return {
    name: "resource",
    ops: [
      {
        op: "resource.alloc",
        description: "Reserve an amount of a named resource (e.g. memory) for persona://<self>, within the token's limit for it.",
        targets: ["persona"],
        args: {
          resource: { type: "text", required: true, description: "resource name, e.g. memory" },
          amount: { type: "uint", required: true, description: "how much" },
        },
        idempotent: false,
        effects: true,
        owns: (ctx) => ctx.target.segments.join("/") === ctx.persona || "a persona allocates for itself only",
        handler: (ctx) => {
          const resource = ctx.args.resource as string;
          if (!/^[a-z][a-z0-9_.]{0,63}$/.test(resource) || resource === "storage.bytes") {
            throw new OpError(
              "SEMANTIC",
              "resource must be a lowercase name other than storage.bytes (counted by storage itself)",
            );
          }
          return ctx.atomically((): OpResult => {
            const a = ledger.alloc(ctx.persona, resource, ctx.args.amount as number, ctx.grant);
            return { status: "SUCCESS", payload: { allocation: a.id, resource, amount: a.amount }, audit: { allocation: a.id } };
          });
        },
      },
      {
        op: "resource.free",
        description: "Free an allocation made by this persona.",
        targets: ["persona"],
        args: { allocation: { type: "text", required: true, description: "the id resource.alloc returned" } },
        idempotent: false,
        effects: true,
        handler: (ctx) => {
          return ctx.atomically((): OpResult => {
            const a = ledger.free(ctx.persona, ctx.args.allocation as string);
            return { status: "SUCCESS", payload: { freed: a.id, resource: a.resource, amount: a.amount } };
          });
        },
      },
      {
        op: "resource.query",
        description: "Usage and limits of persona://<id> (with the authorizing token's limits) or of workspace obj://<ws>.",
        targets: ["persona", "obj"],
        args: {},
        idempotent: true,
        effects: false,
        handler: (ctx): OpResult => {
          if (ctx.target.scheme === "obj") {
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
      },
    ],
  };
}
