import { AuditRows } from "./sqlite/audit.js";
import { SqliteBase } from "./sqlite/base.js";
import { LedgerRows } from "./sqlite/ledger.js";
import { ObjectRows } from "./sqlite/objects.js";
import { RegistryRows } from "./sqlite/registry.js";
import { SessionRows } from "./sqlite/sessions.js";
import { TokenRows } from "./sqlite/tokens.js";
import { WorkRows } from "./sqlite/work.js";

/**
 * The embedded store: one SQLite database in WAL mode holding personas, objects, tokens, the
 * ledger, ops and agents, the audit log, and the sessions open. Each table group is a module of store/sqlite/ (its
 * statements and row mapping); the connection, pragmas and schema are in sqlite/base.ts and
 * sqlite/schema.ts. The kernel's parts see only the interfaces of store/types.ts.
 */
export class SqliteStore extends SessionRows(AuditRows(TokenRows(WorkRows(LedgerRows(ObjectRows(RegistryRows(SqliteBase))))))) {}
