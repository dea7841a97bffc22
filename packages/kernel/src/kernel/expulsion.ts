import type { AgentManager } from "../agents/manager.js";
import type { AuditLog } from "../audit/log.js";
import type { ComputeEngine } from "../compute/engine.js";
import type { Logger } from "../log.js";
import type { UploadTable } from "../primitives/storage-uploads.js";
import type { ProcessTable } from "../sandbox/processes.js";
import { sameRegistration } from "../session/persona-keys.js";
import type { Session } from "../session/session.js";
import type { RepeatedFailureLog } from "../store/storage-full.js";
import type { PersonaStore } from "../store/types.js";

/** What the expulsion policy acts on. */
export interface ExpulsionScope {
  /** The registered keys, a key the store still holds but is gone hidden (AgentManager.registry). */
  readonly registry: Pick<PersonaStore, "getPersona">;
  sessions(): Session[];
  readonly agents: AgentManager;
  readonly processes: ProcessTable;
  /** Ops queued or running (tasks run in workers, not in the process table). */
  readonly compute?: Pick<ComputeEngine, "cancelOf"> | undefined;
  /** Uploads in progress (none: no file store). */
  readonly uploads?: Pick<UploadTable, "dropOf"> | undefined;
  readonly log: Logger;
  /** After the expulsions: sessions holding now-revoked handles are told (the revocation fan-out). */
  notifyRevoked(): void;
}

/**
 * The expulsion policy, after a registry change: every open session whose persona is no longer
 * registered with the key it attested with ends at once (AUTH/PERSONA_REMOVED), every agent
 * running as a removed persona is killed, and so is every process a removed persona started;
 * its ops queued or running end and its uploads in progress are dropped;
 * sessions holding revoked handles are told. Returns how many sessions ended.
 */
export function expelUnregistered(x: ExpulsionScope): number {
  const ended = endUnregisteredSessions(x);
  const agents = x.agents.killUnregistered();
  if (agents) x.log.info({ agents }, "agents of removed personas were killed");
  // Commands (and agents) started by a removed persona end with it too.
  // A persona id removed and registered again before the kernel looked (the CLI beside it,
  // within one tick) is registered, but not by the holder that started the work: a registration
  // made after the work began is another holder's, and the work ends as a removed persona's.
  const gone = (p: string, since: number) => !registeredSince(x, p, since);
  const started = x.processes.killWhere(gone, "persona removed");
  if (started) x.log.info({ processes: started }, "processes started by removed personas were killed");
  // Their tasks and queued ops, and their uploads in progress, whatever token began them (no one
  // could commit such an upload any more).
  const ops = x.compute?.cancelOf(gone) ?? 0;
  if (ops) x.log.info({ ops }, "ops submitted by removed personas were ended");
  x.uploads?.dropOf(gone);
  x.notifyRevoked();
  return ended;
}

/**
 * Ends (AUTH/PERSONA_REMOVED) every open session whose persona is no longer registered with the
 * key it attested with: the session part of {@link expelUnregistered}, alone for the kernel's own
 * removal of an agent's key, whose revocation fan-out runs beside it. Returns how many ended.
 */
export function endUnregisteredSessions(x: Pick<ExpulsionScope, "registry" | "sessions">): number {
  let ended = 0;
  for (const s of x.sessions()) {
    if (s.state !== "ready" && s.state !== "closing") continue;
    if (sameRegistration(s, x.registry.getPersona(s.persona))) continue;
    s.expel("PERSONA_REMOVED", `persona ${s.persona} was removed from the registry`);
    ended++;
  }
  return ended;
}

/**
 * Audits registry changes made on the home database without the kernel (the CLI while no
 * kernel answered, or another process beside this one) and applies them to the running
 * kernel: revocations they made take effect, and sessions of removed or re-keyed personas end.
 */
export function applyOfflineChanges(
  x: ExpulsionScope & {
    readonly audit: AuditLog;
    reloadRevocations(): void;
    /** Tells what hooks the registry's changes (PersonaStore.registryChangedElsewhere). */
    registryChangedElsewhere(): void;
    readonly failures?: RepeatedFailureLog;
  },
): void {
  try {
    const entries = x.audit.recordOfflineJournal();
    x.failures?.reset();
    if (entries.length === 0) return;
    x.reloadRevocations();
    // The registry may have changed too: what hooks its changes (the persona roots) hears it.
    x.registryChangedElsewhere();
    expelUnregistered(x);
  } catch (e) {
    // Every tick while it fails (a full disk): logged when it begins, then once a minute.
    if (x.failures) x.failures.failed({ err: (e as Error).message });
    else x.log.error({ err: e }, "could not apply administrative changes made without the kernel; retrying on the next tick");
  }
}

/**
 * Whether `persona` is registered by a registration made no later than `since` (the work's
 * start), a key the kernel holds gone though still stored counted as removed.
 */
function registeredSince(x: Pick<ExpulsionScope, "registry">, persona: string, since: number): boolean {
  const rec = x.registry.getPersona(persona);
  return rec !== undefined && rec.createdAt <= since;
}
