import { defineOp, type FieldSpec } from "./define.js";
import { limitsField } from "./token.js";

/* resource.* — reservations against a token's limits, and usage. */

const amounts = (description: string) => ({ ...limitsField, description }) as const satisfies FieldSpec;

export const resourceAlloc = defineOp({
  op: "resource.alloc",
  description:
    "Reserve an amount of a named resource (e.g. memory) for persona://<self>, within the token's limit for it. RESOURCE when the caller's top-level persona and the personas under it hold as many allocations as the kernel allows, whatever their resources. An allocation lasts until it is freed or its persona leaves the registry (an agent's end or kill, persona.remove), which frees it.",
  targets: ["persona"],
  args: {
    resource: { type: "text", required: true, description: "resource name, e.g. memory" },
    amount: { type: "uint", required: true, description: "how much" },
  },
  result: {
    allocation: { type: "text", required: true, description: "the allocation's id" },
    resource: { type: "text", required: true, description: "the resource" },
    amount: { type: "uint", required: true, description: "how much" },
  },
  idempotent: false,
  effects: true,
});

export const resourceFree = defineOp({
  op: "resource.free",
  description:
    "Free an allocation of persona://<id> or of a persona under it (an agent's, a sub-persona's); <id> is the caller or a persona under it (PERMISSION otherwise), and an allocation of any other persona is SEMANTIC as if absent.",
  targets: ["persona"],
  args: { allocation: { type: "text", required: true, description: "the id resource.alloc returned" } },
  result: {
    freed: { type: "text", required: true, description: "the allocation freed" },
    resource: { type: "text", required: true, description: "its resource" },
    amount: { type: "uint", required: true, description: "its amount" },
  },
  idempotent: false,
  effects: true,
});

export const resourceQuery = defineOp({
  op: "resource.query",
  description:
    "Usage and limits of persona://<id> (with the authorizing token's limits) or of workspace obj://<ws>. A persona other than the admin queries only personas in its own persona tree (PERMISSION otherwise). A workspace is queried by its bare address, which a grant must cover (obj://<ws> or obj://<ws>/**): obj://<ws>/<path> is SEMANTIC, since the answer is the whole workspace's.",
  targets: ["persona", "obj"],
  args: {},
  result: {
    persona: { type: "text", description: "persona://: the persona" },
    workspace: { type: "text", description: "obj://: the workspace" },
    usage: {
      ...amounts(
        "usage by resource name, each only while some of it is used: storage.bytes while something is stored (each object its body, its path's bytes and 512 for its row, §12), a named resource while some of it is allocated (absent is 0)",
      ),
      required: true,
    },
    limits: amounts("persona://: the authorizing token's limits"),
    inFlight: {
      type: "uint",
      description: "persona://: its requests in flight (its running commands and its tasks queued or running included)",
    },
    quotas: amounts("obj://: the workspace's quotas"),
  },
  idempotent: true,
  effects: false,
});

export const resourceOps = [resourceAlloc, resourceFree, resourceQuery] as const;
