import type { SqliteStore } from "../store/sqlite.js";
import type { AgentStore, AuditStore, ObjectStore, OpStore, PersonaStore, TokenStore } from "../store/types.js";

/** What a read-only look at a running kernel's records may ask. */
const READS = [
  "queryAudit",
  "lastAudit",
  "firstAuditSeq",
  "countAudit",
  "scanAudit",
  "checkpoints",
  "offlineJournal",
  "getPersona",
  "listPersonas",
  "getAgent",
  "listAgents",
  "getOp",
  "listOps",
  "statObject",
  "getToken",
  "tokensDerivedFrom",
] as const;

/**
 * A running kernel's records, read-only: the audit chain and its checkpoints (enough for
 * verifyAudit), the persona registry, tokens, agents, ops and object metadata. For tests, embedders and
 * tooling in the same process; no handle on the database, and nothing here writes.
 */
export type KernelInspector = Pick<
  AuditStore,
  "queryAudit" | "lastAudit" | "firstAuditSeq" | "countAudit" | "scanAudit" | "checkpoints" | "offlineJournal"
> &
  Pick<PersonaStore, "getPersona" | "listPersonas"> &
  Pick<AgentStore, "getAgent" | "listAgents"> &
  Pick<OpStore, "getOp" | "listOps"> &
  Pick<TokenStore, "getToken" | "tokensDerivedFrom"> &
  Pick<ObjectStore, "statObject"> & {
    /** WAL pages after which the kernel's own commits checkpoint (0: the background worker does it). */
    walAutoCheckpoint(): number;
  };

export function inspector(store: SqliteStore): KernelInspector {
  const reads = Object.fromEntries(READS.map((name) => [name, store[name].bind(store)]));
  return {
    ...(reads as Omit<KernelInspector, "walAutoCheckpoint">),
    walAutoCheckpoint: () => store.db.pragma("wal_autocheckpoint", { simple: true }) as number,
  };
}
