/** @kpip/kernel — the KPIP kernel, embeddable and runnable. */

export { isAgentPersona } from "./agents/namespace.js";
export { AnchorFileError, type AnchorResult, type AuditAnchor, parseAnchors, verifyAnchors } from "./audit/anchors.js";
export { AuditChainError, checkInheritedChain } from "./audit/inherit.js";
export { AuditLog } from "./audit/log.js";
export { type AuditReader, type AuditRecord, HomeReadError, openAuditReader } from "./audit/reader.js";
export { recordBytes, recordHash } from "./audit/record.js";
export { OutcomeRecoveryError } from "./audit/recover-outcomes.js";
export { unsignedRun, type VerifyResult, verifyAudit } from "./audit/verify.js";
export { verifyAuditFile, verifyAuditReader } from "./audit/verify-parallel.js";
export type { AuthorizationRequest, Authorizer, Decision } from "./auth/authorizer.js";
export { type Capabilities, capabilities } from "./auth/capabilities.js";
export { CapEnforcer, HandleTable } from "./auth/enforcer.js";
export { KeyFileError, ROOT_KEYS_FILE, RootKeys } from "./auth/keys.js";
export type { MintSpec } from "./auth/mint-spec.js";
export { EscalationError, TokenService } from "./auth/tokens.js";
export type { TaskRegistration } from "./compute/engine.js";
export {
  ConfigError,
  DEFAULT_CONFIG,
  defaultHome,
  envName,
  flagName,
  type KernelConfig,
  resolveConfig,
  SETTINGS,
} from "./config.js";
export { HOME_FILES, HomeInUseError, writeSecret } from "./home.js";
export type { KernelInspector } from "./kernel/inspect.js";
export { Kernel, type KernelOptions } from "./kernel.js";
export { removalRefusal, removePersonaTree } from "./primitives/persona.js";
export {
  type ArgSpec,
  type OpContext,
  OpError,
  type OpResult,
  type PrimitiveDeclaration,
  type PrimitiveFamily,
} from "./primitives/types.js";
export { SandboxUnavailableError } from "./sandbox/sandbox.js";
export {
  readRegularFile,
  secureHome,
  UnreadableFileError,
  UnsafeHomeError,
  unsafeDirectoryAboveFile,
} from "./secure-files.js";
export type { Connection } from "./session/connection.js";
export { boundedColumns, MAX_CELL_BYTES } from "./store/sqlite/cells.js";
export type { JournalEntry } from "./store/sqlite/registry.js";
export { DamagedDatabaseError } from "./store/sqlite/schema.js";
export { SqliteStore } from "./store/sqlite.js";
export type * from "./store/types.js";
export { answers as kernelAnswers, SocketPathError } from "./transport/uds.js";
export { KERNEL_VERSION } from "./version.js";
