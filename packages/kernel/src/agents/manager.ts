import { type ChildProcess, spawn } from "node:child_process";
import type { Socket } from "node:net";
import type { Writable } from "node:stream";
import {
  type Grant,
  generateIdentity,
  isPersonaId,
  type Limits,
  type Right,
  serializeIdentity,
  tokenToString,
} from "@kpip/protocol";
import { tokenDetail } from "../audit/detail.js";
import type { KernelAct } from "../audit/kernel-records.js";
import { streamDigest } from "../audit/op-result-detail.js";
import { tokenRef } from "../auth/revocations.js";
import type { TokenService } from "../auth/tokens.js";
import type { EventBus } from "../events/bus.js";
import { emitKernelEvent } from "../events/kernel-topics.js";
import type { Logger } from "../log.js";
import { registrationsOf, removeTrees, tokensOfRemoved } from "../primitives/persona.js";
import { OpError } from "../primitives/types.js";
import { releaseAllocationsWithin } from "../resources/ledger.js";
import { FIRST_SEGMENT, registeredAbove, type TreeRoots, treeBoundRefusal } from "../resources/lineage.js";
import { closePipesAfterExit, exitedBefore, killSandbox } from "../sandbox/kill.js";
import { OutputCapture, throttlePastCapture } from "../sandbox/output.js";
import { type ProcessSlot, type ProcessTable, reservedFrom } from "../sandbox/processes.js";
import { checkCommandLine, type Launch, launchFailure, SANDBOX_SCRATCH, type Sandbox } from "../sandbox/sandbox.js";
import type { Connection } from "../session/connection.js";
import { sameRegistration } from "../session/persona-keys.js";
import { DEFAULT_KEPT_BYTES, isStorageFull, KeptBytes, KeptWrites, notKeptMessage } from "../store/storage-full.js";
import type { AgentRecord, AgentStore, AgentSummary, LedgerStore, OpStore, PersonaStore, TokenStore } from "../store/types.js";
import { SocketConnection } from "../transport/uds.js";
import { agentKey, agentPersona, agentUri, isAgentPersona } from "./namespace.js";
import { processIdentity, SPAWN_ENV, stillOwnGroup } from "./process-identity.js";

export interface AgentOptions {
  maxOutputBytes: number;
  maxRuntimeMs: number;
  /** Most agents running at once, kernel-wide. */
  maxAgents: number;
  /** Most of them one spawner's persona tree may hold (the admin persona exempt); absent: no such bound. */
  maxAgentsPerPersona?: number;
  /** The admin persona, which alone may take the last `adminReserve` of maxAgents. */
  adminPersona?: string;
  adminReserve?: number;
  /** Ended agents kept per spawner: at an agent's end, its spawner's older ones beyond this are forgotten. */
  maxEndedAgentsPerPersona: number;
  /** The top of each persona's tree (maxEndedAgentsPerPersona counts it); by first segment when absent. */
  roots?: TreeRoots;
  sandbox: Sandbox;
  processes: ProcessTable;
  /** Takes the kernel end of an agent's inherited connection as a session. */
  accept(conn: Connection): void;
  /**
   * Puts an act of the kernel on the audit record (agent lifecycle, identities, revocations);
   * returns its seq, and tells `written` its seq again if it is written late (a full disk).
   */
  record(act: KernelAct, written?: (seq: number) => void, lost?: () => void): number;
  /**
   * After the kernel revoked an agent's token (its end, a failed start, a lost agent): the
   * revocation fan-out, so what the agent started under it (commands, tasks, agents, uploads,
   * subscriptions) ends too.
   */
  onRevoked?(): void;
  /**
   * An agent's persona left the registry (its end, a failed start, a lost agent): its other
   * sessions end too (another process the agent gave its credentials to holds no session as it),
   * and what it started under a token not its own (its spawner's) — processes, ops, uploads —
   * as a removed persona's does: nothing it began outlives it for a later agent of its name.
   */
  onForgotten?(persona: string): void;
  /** Told of a write refused for lack of room (kernel/storage-space.ts): the condition is noted and logged there. */
  storageFull?(e: unknown): void;
  /** What the output of agents that ended while the storage was full may hold in memory (shared with ops' results). */
  keptBytes?: KeptBytes;
}

export interface SpawnRequest {
  spawner: string;
  grant: Grant | undefined;
  executable: string;
  instance: string;
  args: string[];
  rights: Right[];
  lifetimeMs: number;
  limits?: Limits;
  /** The grant allows, and the request asks for, network access from the sandbox. */
  network?: boolean;
}

/** The kernel's revocation of an agent's token (`own`) and of the tokens minted for its persona id (`forId`, `rest`). */
interface AgentRevocation {
  own: ReturnType<TokenService["revokeNow"]>;
  rest: ReturnType<TokenService["revokeAllNow"]> | undefined;
  forId: string[];
  /** The personas the agent registered, removed with it ({@link AgentManager.removeRegistrations}), and their trees' tokens' revocation. */
  registrations: { removed: string[]; tokens: string[]; revocation: ReturnType<TokenService["revokeAllNow"]> | undefined };
}

/** A registration of a persona id: its time and key. */
interface Registration {
  createdAt: number;
  publicKey: Uint8Array;
}

interface Live {
  child: ChildProcess;
  launch: Launch;
  /** Its place in the process table, held until its scratch directory is gone. */
  slot: ProcessSlot;
  /** The persona the agent acts as. */
  persona: string;
  /**
   * Its key's registration (its time and key): what its end removes only while the id is still
   * registered so — registered again since (beside the kernel), the id is another holder's.
   */
  registration: Registration;
  out: { stdout: OutputCapture; stderr: OutputCapture };
  timer: NodeJS.Timeout;
  /** The agent's own token (its id, chain and key): a revocation covering it, or its key's retirement, kills the agent. */
  token: { id: string; chain: string[]; kid: string };
  killedBy?: "kill" | "lifetime" | "kernel" | "persona removed" | "token revoked" | "key retired";
  /** With killedBy "token revoked": the revoked token that covered its own (its own id, or an ancestor's in its chain). */
  revokedToken?: string;
  /** Its authority ended at its kill, before its process closed ({@link endAuthority}): its end revokes only what came since. */
  authorityEnded?: boolean;
  /**
   * The kill's token.revoked record: `lost` once it is known never to be written (dropped on a
   * full disk), so its end records the revocation instead; `skipped` once its end left it to
   * that record (a record lost after the end is made again then).
   */
  killRecord?: { lost: boolean; skipped: boolean };
}

/**
 * Agents: real OS processes the kernel starts (never through a shell), each in its own
 * sandbox with its own scratch directory, each with its own persona identity (in the agent
 * namespace under its spawner) and a token minted from the spawner's grant (never wider).
 * Identity and token reach the agent through an inherited pipe (fd 3), never argv or the
 * environment; its only way to the kernel is the connection inherited on fd 4. Agent ids are
 * scoped to their spawner. Output is captured with a bound; exit code and signal are
 * recorded; lifecycle events go to the agent's kernel topic (kernelTopic), which its spawner sees.
 */
export class AgentManager {
  private readonly live = new Map<string, Live>();
  /** Agents that ended and whose scratch directory is still being removed: they keep their maxAgents place. */
  private ending = 0;

  constructor(
    private readonly store: AgentStore &
      PersonaStore &
      LedgerStore &
      Pick<OpStore, "disownWork"> &
      TokenStore & { transaction<T>(fn: () => T): T },
    private readonly tokens: TokenService,
    private readonly events: EventBus,
    private readonly opts: AgentOptions,
    private readonly log: Logger,
  ) {}

  get runningCount(): number {
    return this.live.size;
  }

  /**
   * Which spawn a persona's requests come from, for what is scoped to it (its ops, the agents it
   * spawned): null for a persona that is no agent; for an agent persona, the running agent's token
   * id — its name, and so its persona id, is reused by later agents, and what an earlier one left
   * is not theirs; undefined when no agent runs as it (a late request of an ended one): none.
   */
  spawnOf(persona: string): string | null | undefined {
    return isAgentPersona(persona) ? this.spawnRecord(persona)?.spawn : null;
  }

  /** A running agent persona's agent and spawn (its token id), for its session's record. */
  spawnRecord(persona: string): { agent: string; spawn: string } | undefined {
    if (!isAgentPersona(persona)) return undefined;
    for (const [id, l] of this.live) if (l.persona === persona) return { agent: agentUri(id), spawn: l.token.id };
    return undefined;
  }

  /**
   * After a crash: agents recorded running are marked lost, and their process group killed when
   * it is still theirs: in this boot, with the pid either still the process spawned (same start
   * time) or gone — then only what is left of the agent's group can carry that id, since Linux
   * gives no new process a pid still used as a group's id. A bare pid is not enough: after a
   * reboot, or once the whole group died with the kernel (--die-with-parent), the pid may lead
   * an unrelated process group, which a kernel running as root would have killed.
   */
  recover(killed = true): void {
    // Ends stored before a kill cut off their agent.exited record (its commit is a turn later):
    // on the record now, once; after a clean stop every record committed, so only the marks go.
    for (const e of this.store.unrecordedAgentEnds()) {
      if (!killed) {
        this.store.agentEndRecorded(e.id);
        continue;
      }
      // What it printed, as its end would have named it: the row stored its captured output with
      // its end (read one agent at a time); null when the row holds none (unknown, not empty).
      const out = this.store.getAgent(e.id, true);
      this.opts.record(
        {
          op: "agent.exited",
          target: agentUri(e.id),
          persona: e.spawner,
          message: `recorded at the next start: ${agentUri(e.id)} ended (${e.state}) and the kernel was killed before its record`,
          detail: {
            agent: e.id,
            persona: e.persona,
            token: e.tokenId,
            state: e.state,
            code: e.exitCode,
            signal: e.signal,
            stdout: out?.stdout ? streamDigest(out.stdout) : null,
            stderr: out?.stderr ? streamDigest(out.stderr) : null,
            recovered: true,
          },
        },
        (seq) => {
          this.endRecorded(e.id);
          // Its token's revocation (stored before its end) lost its token.revoked record with this
          // one, which came after it in the same turn: refusals of the token name this record.
          this.tokens.noteRevokeRecord(e.tokenId, seq);
        },
      );
    }
    // Only the running agents' ids and pids: never every agent's row and output.
    for (const a of this.store.runningAgents()) {
      // Whether its processes ran on after the kernel died (no sandbox dying with it): this start
      // kills them, and the record says so — they acted unsupervised until now.
      let outlived = false;
      if (a.pid && a.procId !== null && stillOwnGroup(a.pid, a.procId, a.tokenId)) {
        try {
          process.kill(-a.pid, "SIGKILL");
          outlived = true;
        } catch {
          // already gone
        }
      } else if (a.pid && a.procId === null) {
        this.log.warn({ agent: a.id, pid: a.pid }, "agent recorded without a process identity: its pid is not signalled");
      }
      // Its token first, and its end stored no earlier than that revocation (as at an agent's
      // end): a start on a full disk killed before there is room must leave it running for the next.
      const revocation = this.revokeAgent(a.tokenId, a.persona);
      const end: Partial<AgentRecord> = { state: "lost", endedAt: Date.now() };
      this.saveEnd(a.id, end, a.tokenId, a.spawner);
      this.opts.record(
        {
          op: "agent.exited",
          target: agentUri(a.id),
          persona: a.spawner,
          message: outlived
            ? `${agentUri(a.id)} was lost with the previous kernel; its processes outlived the previous kernel and were killed at this start`
            : `${agentUri(a.id)} was lost with the previous kernel`,
          detail: {
            agent: a.id,
            persona: a.persona,
            token: a.tokenId,
            state: "lost",
            code: null,
            signal: outlived ? "SIGKILL" : null,
            // Its output was captured in the lost kernel's memory only: unknown (null), not empty.
            stdout: null,
            stderr: null,
            ...(outlived ? { outlived: true, killedBy: "kernel start" } : {}),
          },
        },
        () => this.endRecorded(a.id),
      );
      // Revoked and recorded at its kill already (agent.kill before its process closed): a record
      // only for what is new; one whose kill record never committed is recorded now (never none).
      const recorded =
        !revocation.own.changed &&
        !revocation.rest?.changed &&
        revocation.registrations.removed.length === 0 &&
        this.tokens.revokeRecorded(a.tokenId);
      if (!recorded) this.recordRevocation(revocation, a.tokenId, a.persona, "the agent was lost with the previous kernel");
      this.forget(a.persona, `${agentUri(a.id)} was lost with the previous kernel`, a.tokenId);
    }
    // No agent outlives its kernel, so no key in the agent namespace may either: one is left when
    // the kernel died between registering a spawn's key and recording the agent (no row names it;
    // its process, the only holder of its secret key, died with the kernel).
    for (const p of this.store.listPersonas())
      if (isAgentPersona(p.id))
        this.forget(p.id, "an agent's key left by the previous kernel, which ended before the agent was recorded");
    this.revokeAgentTokens();
  }

  /**
   * Removes an agent's persona key from the registry, on the record, with the allocations it (or
   * an agent it spawned) held: their ids were answered to the agent alone, so kept they would
   * hold the spawner's tree at its limits for good, and the next agent of that name would
   * inherit them.
   */
  private forget(persona: string, why: string, token?: string, own?: Registration): void {
    // The personas it registered, removed with its revocation (at its kill or end): named here too.
    const also = this.registrationsRemoved.get(persona);
    this.registrationsRemoved.delete(persona);
    if (!this.store.getPersona(persona)) return;
    // Registered again since the agent's key (beside the kernel): another holder's key, left.
    if (own !== undefined && this.registeredAgainSince(persona, own) !== undefined) return;
    this.unforgotten.delete(persona);
    let freed: ReturnType<typeof releaseAllocationsWithin> | undefined;
    try {
      freed = this.removeKey(persona);
    } catch (e) {
      if (!isStorageFull(e)) throw e;
      // Its token is revoked in memory (revokeFor): the key goes once there is room (storeKept).
      this.unforgotten.add(persona);
      this.opts.storageFull?.(e);
    }
    this.opts.record({
      op: "persona.removed",
      target: `persona://${persona}`,
      persona,
      message: why,
      // The spawn whose key this was (its token): the persona id is reused by later agents of its name.
      detail: {
        persona,
        reason: why,
        ...(token ? { token } : {}),
        ...(freed ? { allocationsFreed: freed } : {}),
        ...(also?.length ? { alsoRemoved: also } : {}),
      },
    });
    this.opts.onForgotten?.(persona);
  }

  /**
   * When `persona` is registered, but not with the agent's registration `own` (its id registered
   * again since, beside the kernel): the time of that other registration; otherwise undefined.
   */
  private registeredAgainSince(persona: string, own: Registration | undefined): number | undefined {
    if (own === undefined) return undefined;
    const rec = this.store.getPersona(persona);
    if (rec === undefined) return undefined;
    return sameRegistration({ registeredAt: own.createdAt, attestedKey: Buffer.from(own.publicKey) }, rec)
      ? undefined
      : rec.createdAt;
  }

  private removeKey(persona: string): ReturnType<typeof releaseAllocationsWithin> {
    return this.store.transaction(() => {
      this.store.removePersona(persona);
      // A later agent of its name (its persona id) does not list this spawn's tokens; the spawner still does.
      this.store.disownTokens(persona, registeredAbove(this.store, persona));
      return releaseAllocationsWithin(this.store, persona);
    });
  }

  /**
   * Agent personas whose key a full disk kept in the registry after the agent ended (their end is
   * on the record, their token revoked, their sessions ended): removed once there is room.
   */
  private readonly unforgotten = new Set<string>();

  /** What a full disk kept back of agents' ends (rows, keys), stored now if there is room (the housekeeping tick). */
  storeKept(): void {
    // An agent's end waits for its token's revocation (exited): the caller stores revocations first.
    if (this.tokens.unstoredCount > 0) return;
    this.keptRows.flush(
      (id, f) => this.store.updateAgent(id, f),
      (e, id) => this.log.error({ err: e, agent: id }, "cannot record agent exit"),
    );
    if (this.keptRows.size > 0) return;
    for (const r of this.keptRegistrations) {
      try {
        // Their tokens were revoked with the agent's revocation (stored first, above).
        this.store.transaction(() => removeTrees(this.store, [], [r], () => {}));
      } catch (e) {
        if (isStorageFull(e)) return;
        this.log.error({ err: e, persona: r }, "cannot remove a persona an ended agent registered");
      }
      this.keptRegistrations.delete(r);
    }
    for (const persona of this.unforgotten) {
      // A later agent of the name runs: its spawn replaced the stale key already.
      if (this.spawnRecord(persona) === undefined && this.store.getPersona(persona)) {
        try {
          this.removeKey(persona);
        } catch (e) {
          if (isStorageFull(e)) return;
          this.log.error({ err: e, persona }, "cannot remove an ended agent's key");
        }
      }
      this.unforgotten.delete(persona);
    }
  }

  /** The budget of kept output when none is shared (a manager built alone: unit tests). */
  private readonly ownKeptBytes = new KeptBytes(DEFAULT_KEPT_BYTES);

  /** Agent row changes a full disk refused (an agent's end): stored once there is room ({@link storeKept}). */
  private readonly keptRows = new KeptWrites<Partial<AgentRecord>>((e) => this.opts.storageFull?.(e), {
    // Read at each write (opts are set by the constructor, after this field's initializer).
    budget: () => this.opts.keptBytes ?? this.ownKeptBytes,
    bytes: (v) => (v.stdout?.byteLength ?? 0) + (v.stderr?.byteLength ?? 0),
    // Past its tree's share the end is kept without its output, its stderr saying why.
    without: (v, n) => ({
      ...v,
      stdout: new Uint8Array(0),
      stderr: Buffer.from(`[kpip] ${notKeptMessage("the agent's output", n)}\n`),
    }),
  });

  /**
   * Stores an agent's end, or keeps it for room: held while its token's revocation waits for room
   * — a kill in between must leave the row "running", so that the next start (which revokes the
   * tokens of agents it finds running) does not find an ended agent whose revocation was in
   * memory only, its token valid again.
   */
  private saveEnd(id: string, f: Partial<AgentRecord>, tokenId: string, spawner: string): void {
    const tree = (this.opts.roots ?? FIRST_SEGMENT).of(spawner);
    if (this.tokens.revocationUnstored(tokenId)) this.keptRows.hold(id, f, undefined, tree);
    else this.keptRows.write(id, f, (v) => this.store.updateAgent(id, v, true), undefined, tree);
  }

  /** An agent's agent.exited record committed: a later start has nothing of its end to record. */
  private endRecorded(id: string): void {
    try {
      this.store.agentEndRecorded(id);
    } catch (e) {
      // Left marked: only a start after a kill records it again (a second record, never none).
      this.log.error({ err: e, agent: id }, "cannot note an agent's end as recorded");
    }
  }

  /** How many agents' ends (rows, keys) wait for room. */
  get keptCount(): number {
    return this.keptRows.size + this.unforgotten.size + this.keptRegistrations.size;
  }

  /**
   * The kernel revokes an agent's token and every token minted or refreshed for its persona id
   * (or an id under it) — by its spawner, by the agent itself from a token handed to it — on the
   * record with every token the revocation ended: the id is its name's, which a later agent of
   * the name acts as, and what was minted for this one is not that one's.
   */
  private revokeFor(tokenId: string, persona: string, reason: string, own?: Registration): void {
    this.recordRevocation(this.revokeAgent(tokenId, persona, own), tokenId, persona, reason);
  }

  /**
   * {@link revoked}, its record made again, once, if it is dropped (a full disk with no room left
   * to keep it, a failed write), as the kill's is: lost, the revocation had no record at all.
   */
  private recordRevocation(r: AgentRevocation, tokenId: string, persona: string, reason: string): void {
    this.revoked(r, tokenId, persona, reason, () => {
      try {
        this.revoked(r, tokenId, persona, reason);
      } catch (e) {
        this.log.error({ err: e, token: tokenId }, "cannot record an agent's revocation again");
      }
    });
  }

  /**
   * Revokes an agent's token and every token minted or refreshed for its persona id (or an id
   * under it), in force now even when a full disk refuses their rows (stored once there is room).
   */
  private revokeAgent(tokenId: string, persona: string, registration?: Registration): AgentRevocation {
    // Its id registered again since by another holder (beside the kernel): what was minted for
    // the id, or registered by it, since then is that holder's, never the agent's to end.
    const since = this.registeredAgainSince(persona, registration);
    const before = (created: number | undefined) => since === undefined || (created ?? since) < since;
    // Its own token first: nothing below (a store refusing the registrations' removal) may leave it in force.
    const own = this.tokens.revokeNow(tokenId, "kernel");
    // Live by the kernel's clock, which the enforcer judges by: not the host's.
    const forId = this.store
      .liveTokensFor(persona, this.tokens.now())
      .filter((id) => id !== tokenId && before(since === undefined ? undefined : this.store.getToken(id)?.createdAt));
    const rest = forId.length > 0 ? this.tokens.revokeAllNow(forId, "kernel") : undefined;
    let registered: { removed: string[]; tokens: string[] } = { removed: [], tokens: [] };
    try {
      registered = this.removeRegistrations(persona, since);
    } catch (e) {
      // Logged: the agent's own revocation stands; its end (or the next start) tries again.
      this.log.error({ err: e, persona }, "cannot remove the personas an agent registered");
    }
    const revocation = registered.tokens.length > 0 ? this.tokens.revokeAllNow(registered.tokens, "kernel") : undefined;
    return { own, rest, forId, registrations: { ...registered, revocation } };
  }

  /**
   * Removes what the agent `persona` registered (persona.register: a persona under its spawner's
   * tree, with a key it generated and may have handed to anyone), and what those registered in
   * turn (each id alone, never personas others registered under it), as a removed persona's registrations go (case 701): left, whoever
   * holds such a key would attest after the agent's end and act under any token of the tree's
   * top. Their tokens are returned for the agent's revocation. A full disk keeps the removal
   * back (hidden from attestation and expulsion until stored: storeKept).
   */
  private removeRegistrations(persona: string, since?: number): { removed: string[]; tokens: string[] } {
    // Judged in the cascade, not after it: what a persona the id's new holder registered since
    // registered in turn is that holder's too (case 738).
    const roots = registrationsOf(
      this.store,
      persona,
      since === undefined
        ? undefined
        : (r) => this.store.registrarOf(r) !== persona || (this.store.getPersona(r)?.createdAt ?? since) < since,
      this.opts.adminPersona,
    );
    if (roots.length === 0) return { removed: [], tokens: [] };
    const tokens = tokensOfRemoved(this.store, [], roots);
    try {
      this.store.transaction(() => removeTrees(this.store, [], roots, () => {}));
    } catch (e) {
      if (!isStorageFull(e)) throw e;
      for (const r of roots) this.keptRegistrations.add(r);
      this.opts.storageFull?.(e);
    }
    this.registrationsRemoved.set(persona, [...(this.registrationsRemoved.get(persona) ?? []), ...roots]);
    return { removed: roots, tokens };
  }

  /** Personas agents registered whose removal a full disk kept back: gone all the same ({@link registry}), removed once there is room. */
  private readonly keptRegistrations = new Set<string>();

  /** The personas removed with each agent's revocation, for its key's persona.removed record ({@link forget}). */
  private readonly registrationsRemoved = new Map<string, string[]>();

  /** A revocation {@link revokeAgent} made: on the record, and its fan-out. */
  private revoked(
    { own, rest, forId, registrations }: AgentRevocation,
    tokenId: string,
    persona: string,
    reason: string,
    /** Told if its record is never written (see KernelRecords.record). */
    lost?: () => void,
  ): void {
    const noted = (seq: number) => {
      if (own.changed) this.tokens.noteRevokeRecord(tokenId, seq);
      for (const id of rest?.revoked ?? []) this.tokens.noteRevokeRecord(id, seq);
      for (const id of registrations.revocation?.revoked ?? []) this.tokens.noteRevokeRecord(id, seq);
    };
    const ended = [...new Set([...own.ended, ...(rest?.ended ?? []), ...(registrations.revocation?.ended ?? [])])];
    // Noted once committed: a number handed out before may go to another record if the batch fails.
    this.opts.record(
      {
        op: "token.revoked",
        target: `token://${tokenId}`,
        persona,
        message: reason,
        detail: {
          revoked: tokenId,
          ended,
          reason,
          ...(forId.length > 0 ? { mintedFor: forId } : {}),
          // What the agent registered, removed with it, and their trees' tokens revoked.
          ...(registrations.removed.length > 0
            ? { registrationsRemoved: registrations.removed, registrationTokens: registrations.tokens }
            : {}),
        },
      },
      noted,
      lost,
    );
    this.opts.onRevoked?.();
  }

  /**
   * No agent outlives its kernel, nor does a token minted for an agent's persona id: at a start,
   * every one still unrevoked is revoked (an end whose revocation a full disk kept back when the
   * kernel was killed, a token minted for a name no agent ran as), on the record.
   */
  private revokeAgentTokens(): void {
    const ids = this.store.liveTokensFor(undefined, this.tokens.now());
    if (ids.length === 0) return;
    const r = this.tokens.revokeAllNow(ids, "kernel");
    const reason = "no token minted for an agent's persona outlives the kernel its agent ran in";
    this.opts.record(
      {
        op: "token.revoked",
        target: "kernel://",
        persona: "kernel",
        message: reason,
        detail: { ended: r.ended, reason, mintedFor: ids },
      },
      (seq) => {
        for (const id of r.revoked) this.tokens.noteRevokeRecord(id, seq);
      },
    );
    this.opts.onRevoked?.();
  }

  /**
   * Throws RESOURCE when `spawner` may not start one more agent: maxAgents, of which the last
   * adminReserve are the admin persona's alone, and the spawner's tree's share of them
   * (maxAgentsPerPersona), so that a tree or two of sleeping agents do not take every place —
   * the admin's, to act in an incident, included.
   */
  private admitAgent(spawner: string): void {
    const { maxAgents: max, adminPersona, adminReserve, maxAgentsPerPersona: share } = this.opts;
    const held = this.live.size + this.ending;
    const ending = this.ending ? ` (${this.ending} ended, their scratch directories still being removed)` : "";
    const reserved = reservedFrom(spawner, max, adminPersona, adminReserve);
    if (held >= max - reserved)
      throw new OpError(
        "RESOURCE",
        held >= max
          ? `the kernel already runs ${max} agents${ending}`
          : `the kernel already runs ${held} agents${ending}: the last ${reserved} of ${max} are reserved for the admin`,
      );
    if (share === undefined || spawner === adminPersona) return;
    const root = (this.opts.roots ?? FIRST_SEGMENT).of(spawner);
    const tree = this.opts.processes.countFor(root, "agent");
    if (tree >= share)
      throw new OpError(
        "RESOURCE",
        treeBoundRefusal(root, spawner, {
          held: (limit, bound) => `already runs ${tree} agents (${bound} ${limit})`,
          what: "agents",
          bound: "maxAgentsPerPersona",
          limit: share,
        }),
      );
  }

  spawn(r: SpawnRequest): AgentRecord {
    const id = agentKey(r.spawner, r.executable, r.instance);
    const uri = `agent://${r.executable}/${r.instance}`;
    const persona = agentPersona(r.spawner, r.instance);
    if (!isPersonaId(persona)) throw new OpError("SEMANTIC", `agent persona ${persona} is not a valid persona id`);
    if (this.live.has(id)) throw new OpError("SEMANTIC", `${uri} is already running`);
    // Agents are told apart by persona too: two live agents must never share one.
    for (const [other, l] of this.live) {
      if (l.persona === persona) throw new OpError("SEMANTIC", `persona ${persona} is already used by ${agentUri(other)}`);
    }
    // The spawn was authorized before its intent record committed: its token may have been revoked
    // in between (the spawner's removal is agent.spawn's ownership rule). Nothing new runs on its behalf.
    if (r.grant && this.tokens.isRevoked(r.grant)) throw new OpError("CAPABILITY", "the authorizing token was revoked");
    this.opts.sandbox.check();
    // A command line no exec takes is refused before a token or key is made for it (and on the record undone).
    checkCommandLine(r.executable, r.args);
    this.admitAgent(r.spawner);
    this.opts.processes.admit(r.spawner, r.grant);
    const lifetime = Math.min(r.lifetimeMs, this.opts.maxRuntimeMs);
    // An earlier agent of this id whose token's revocation waits for room: its row, which this
    // spawn's replaces, is the only one naming that token for the next start to revoke after a kill.
    const earlier = this.store.getAgent(id, false)?.tokenId;
    if (earlier !== undefined && this.tokens.revocationUnstored(earlier)) {
      this.tokens.storeKept();
      if (this.tokens.revocationUnstored(earlier))
        throw new OpError(
          "RESOURCE",
          `the kernel's storage is full: the revocation of an earlier ${uri}'s token cannot be stored yet; retry once space is freed`,
        );
    }
    const identity = generateIdentity(persona);
    // Only ever a key in the agent namespace: a stale one (a crash, or an end whose removal a full
    // disk kept back: storeKept) is replaced, on the record — and disowned before the new token is
    // minted, so the earlier agent's tokens pass to its spawner, never to this one.
    this.forget(persona, `stale key of ${uri} replaced`);
    // Its removal refused room: nothing is made until it can be (no key beside it, no token it would see).
    if (this.unforgotten.has(persona))
      throw new OpError(
        "RESOURCE",
        `the kernel's storage is full: the key an earlier ${uri} left cannot be removed yet; retry once space is freed`,
      );
    // Within the spawner's grant: a wider one is refused (EscalationError, PERMISSION).
    const token = this.tokens.mint(r.grant, r.spawner, {
      sub: persona,
      rights: r.rights,
      ttlMs: lifetime,
      limits: r.limits ?? r.grant?.limits ?? {},
      ...(r.grant?.workspaces ? { workspaces: r.grant.workspaces } : {}),
      ...(r.grant?.domains ? { domains: r.grant.domains } : {}),
    });
    this.store.addPersona(persona, identity.publicKey);
    const registration = this.store.getPersona(persona) ?? { createdAt: Date.now(), publicKey: identity.publicKey };
    this.opts.record({
      op: "persona.added",
      target: `persona://${persona}`,
      persona: r.spawner,
      message: `key of ${uri} spawned by ${r.spawner}`,
      detail: {
        persona,
        agent: id,
        spawner: r.spawner,
        token: token.claims.id,
        key: Buffer.from(identity.publicKey).toString("base64url"),
      },
    });
    let launch: Launch | undefined;
    let child: ChildProcess;
    try {
      launch = this.opts.sandbox.launch({
        executable: r.executable,
        args: r.args,
        env: {
          PATH: this.opts.sandbox.programPath(),
          HOME: SANDBOX_SCRATCH,
          TMPDIR: "/tmp",
          KPIP_BOOTSTRAP_FD: "3",
          KPIP_AGENT: uri,
          KPIP_PERSONA: persona,
          // Tells its group the kernel's after a kill, its leader gone (stillOwnGroup).
          [SPAWN_ENV]: token.claims.id,
        },
        network: r.network === true,
        // The agent's own token's limits: within the spawner's (the mint refused wider), and as
        // tight as the spawner delegated — its process is no less bounded than its commands.
        limits: this.opts.sandbox.limitsFor(token.claims.limits),
        // fd 3: the handoff pipe; fd 4: the agent's connection to the kernel (a socket pair).
        extra: ["pipe", "pipe"],
        owner: (this.opts.roots ?? FIRST_SEGMENT).of(r.spawner),
      });
      child = spawn(launch.file, launch.args, launch.options);
      launch.spawned(child);
      closePipesAfterExit(child);
    } catch (e) {
      void launch?.cleanup();
      this.forget(persona, `${uri} did not start`, token.claims.id);
      this.revokeFor(token.claims.id, persona, `${uri} did not start`);
      const why = launchFailure(e, (err) => this.log.warn({ err, agent: id }, "agent not started"));
      throw new OpError(why.errorClass, `cannot start ${r.executable}: ${why.message}`);
    }
    const rec: AgentRecord = {
      id,
      persona,
      spawner: r.spawner,
      command: r.executable,
      args: r.args,
      pid: child.pid ?? null,
      state: "running",
      exitCode: null,
      signal: null,
      startedAt: Date.now(),
      endedAt: null,
      deadline: Date.now() + lifetime,
      stdout: null,
      stderr: null,
      tokenId: token.claims.id,
      cwd: launch.scratch,
      procId: child.pid === undefined ? null : (processIdentity(child.pid) ?? null),
      // An agent spawner's name is reused: this agent is its current spawn's alone.
      spawnerSpawn: this.spawnOf(r.spawner) ?? null,
    };
    try {
      this.store.putAgent(rec);
    } catch (e) {
      // Its process runs already: left so, it acted with no row, no process slot and no kill path.
      // Killed (its group), its directory removed once it has ended, its key and token undone; the
      // store's error answers (RESOURCE when it was refused room).
      killSandbox(child.pid, this.opts.sandbox.mode === "bwrap");
      const started = launch;
      child.once("error", () => {});
      child.once("close", () => void started.cleanup());
      this.forget(persona, `${uri} not recorded`, token.claims.id);
      this.revokeFor(token.claims.id, persona, `${uri} not recorded`);
      throw e;
    }
    // An earlier agent of this id whose end a full disk kept: its row is replaced, and what was
    // kept of it must be neither read over this one's nor stored over it (storeKept).
    this.keptRows.delete(id);
    const out = { stdout: new OutputCapture(this.opts.maxOutputBytes), stderr: new OutputCapture(this.opts.maxOutputBytes) };
    child.stdout?.on("data", (d: Buffer) => out.stdout.push(d));
    child.stderr?.on("data", (d: Buffer) => out.stderr.push(d));
    // What comes past the captured bytes is discarded, and read no faster than a bounded rate.
    throttlePastCapture(child.stdout, this.opts.maxOutputBytes);
    throttlePastCapture(child.stderr, this.opts.maxOutputBytes);
    const live: Live = {
      child,
      launch,
      // The expulsion's kill (its spawner removed, or registered again since): its authority ends
      // with it, as every kill's does, unless a kill already under way decided that (a removed
      // persona's own kill: its key is gone). Left to its end, its token held until its process closed.
      slot: this.opts.processes.add({
        kind: "agent",
        id,
        persona: r.spawner,
        kill: () => {
          if (this.live.get(id)?.killedBy === undefined && this.killLive(id, "persona removed")) this.endAuthority(id);
        },
      }),
      persona,
      registration,
      out,
      timer: setTimeout(() => this.killLive(id, "lifetime") && this.endAuthority(id), lifetime),
      token: { id: token.claims.id, chain: token.claims.chain, kid: token.claims.kid },
    };
    live.timer.unref();
    this.live.set(id, live);
    const conn = child.stdio[4] as Socket | null;
    if (conn) this.opts.accept(new SocketConnection(conn, "agent"));
    // The secrets go through the pipe on fd 3 and nowhere else.
    const boot = child.stdio[3] as Writable | null;
    boot?.on("error", () => {});
    boot?.end(`${JSON.stringify({ identity: serializeIdentity(identity), token: tokenToString(token), fd: 4, agent: uri })}\n`);
    child.once("error", (e) => {
      this.log.info({ agent: id, err: e.message }, "agent failed to start");
    });
    child.once("close", (code, signal) => this.exited(id, rec, code, signal));
    this.opts.record({
      op: "agent.spawned",
      target: uri,
      persona: r.spawner,
      detail: {
        agent: id,
        persona,
        pid: rec.pid,
        command: r.executable,
        args: r.args.length,
        spawner: r.spawner,
        token: token.claims.id,
        // What the agent may do, as a mint's record says it: its token holds no mint record of its own.
        grant: tokenDetail(token, undefined, r.grant ? tokenRef(r.grant) : undefined),
        ...(rec.spawnerSpawn ? { spawnerSpawn: rec.spawnerSpawn } : {}),
      },
    });
    // No pid: the host's process ids are no persona's business (the audit record has it).
    emitKernelEvent(this.events, "agents", persona, id, { agent: uri, state: "running", persona }, rec.startedAt);
    return rec;
  }

  private exited(id: string, rec: AgentRecord, code: number | null, signal: NodeJS.Signals | null): void {
    const live = this.live.get(id);
    if (!live) return;
    this.live.delete(id);
    live.slot.ended();
    clearTimeout(live.timer);
    // In the background (never rejects): the agent's end is recorded and its authority ends
    // whatever it left there; its places (process table, maxAgents) are held until the directory
    // is gone, done or failed. Its id may be used again meanwhile: the places are counted apart.
    this.ending++;
    void live.launch.cleanup().finally(() => {
      this.ending--;
      live.slot.release();
    });
    const state = live.killedBy ? "killed" : "exited";
    // Node reports a spawn that failed after it returned (fork's EAGAIN once the host's pids are
    // used up) as a negative errno: no exit code (PROTOCOL: uint), the process never ran.
    if (code !== null && code < 0) code = null;
    const f: Partial<AgentRecord> = {
      state,
      exitCode: code,
      signal: signal ?? null,
      endedAt: Date.now(),
      stdout: live.out.stdout.bytes(),
      stderr: live.out.stderr.bytes(),
    };
    // Each step on its own: a full disk refusing the row must not leave the agent's authority
    // in force (its token, its key, what it started), as it did when the row's failure skipped the rest.
    const step = (what: string, fn: () => void) => {
      try {
        fn();
      } catch (e) {
        this.log.error({ err: e, agent: id }, what);
      }
    };
    // The agent's authority ends with it: its token is revoked first, in force at once.
    let revocation: AgentRevocation | undefined;
    step("cannot revoke an ended agent's token", () => {
      revocation = this.revokeAgent(rec.tokenId, rec.persona, live.registration);
    });
    // Stored only once its revocation is ({@link saveEnd}).
    step("cannot record agent exit", () => this.saveEnd(id, f, rec.tokenId, rec.spawner));
    step("cannot record agent exit", () => {
      this.opts.record(
        {
          op: "agent.exited",
          target: agentUri(id),
          persona: rec.spawner,
          detail: {
            agent: id,
            persona: rec.persona,
            token: rec.tokenId,
            state,
            code,
            signal: signal ?? null,
            ...(live.killedBy ? { killedBy: live.killedBy } : {}),
            ...(live.killedBy === "token revoked" && live.revokedToken ? { revokedToken: live.revokedToken } : {}),
            // What it printed, by hash: its captured output goes with its row's retention or trim.
            ...(f.stdout ? { stdout: streamDigest(f.stdout) } : {}),
            ...(f.stderr ? { stderr: streamDigest(f.stderr) } : {}),
          },
        },
        () => this.endRecorded(id),
      );
    });
    step("cannot revoke an ended agent's token", () => {
      // Revoked at its kill already, on the record or on its way there: a record only for what
      // was minted for its id since. A kill record dropped (a full disk) leaves it to this one.
      if (
        revocation &&
        live.authorityEnded &&
        !live.killRecord?.lost &&
        !revocation.own.changed &&
        !revocation.rest?.changed &&
        revocation.registrations.removed.length === 0
      ) {
        if (live.killRecord) live.killRecord.skipped = true;
        return;
      }
      if (revocation) this.recordRevocation(revocation, rec.tokenId, rec.persona, `${agentUri(id)} ended`);
      else this.revokeFor(rec.tokenId, rec.persona, `${agentUri(id)} ended`, live.registration);
    });
    step("cannot remove an ended agent's key", () =>
      this.forget(rec.persona, `${agentUri(id)} ended`, rec.tokenId, live.registration),
    );
    this.killed.delete(rec.persona);
    try {
      // Each ended agent keeps up to 2 × maxOutputBytes until its retention: a spawner's whole tree
      // keeps a bounded number (per spawner, sub-personas it registers would each keep as many).
      this.store.trimEndedAgents((this.opts.roots ?? FIRST_SEGMENT).of(rec.spawner), this.opts.maxEndedAgentsPerPersona);
    } catch (e) {
      this.log.error({ err: e, agent: id }, "cannot forget older ended agents");
    }
    emitKernelEvent(
      this.events,
      "agents",
      rec.persona,
      id,
      {
        agent: agentUri(id),
        state,
        ...(code !== null ? { exitCode: code } : {}),
        ...(signal ? { signal } : {}),
        ...(live.killedBy ? { killedBy: live.killedBy } : {}),
      },
      rec.startedAt,
    );
  }

  private killLive(id: string, why: Live["killedBy"]): boolean {
    const live = this.live.get(id);
    if (!live) return false;
    // Exited by itself, its last output still being read: it ends as it did, and its pid,
    // reaped, may be another process's by now (never signalled).
    if (exitedBefore(live.child)) return false;
    live.killedBy ??= why;
    killSandbox(live.child.pid, this.opts.sandbox.mode === "bwrap");
    return true;
  }

  /**
   * Kills every running agent whose persona is no longer registered (removed with its spawner,
   * or on its own): nothing keeps acting as a removed persona. Returns how many.
   */
  killUnregistered(): number {
    return this.killWhere((live) => !this.store.getPersona(live.persona), "persona removed");
  }

  /**
   * The revocation fan-out's part here: kills every running agent whose token `isRevoked` covers
   * (its own, or one it was minted from: the spawner's token it was spawned under, and that
   * token's ancestors and refresh family). Its token no longer reaches the kernel; its process
   * ends too, on the record (`agent.exited`, killedBy "token revoked"). Returns how many.
   */
  killRevoked(isRevoked: (t: { id: string; chain: string[] }) => boolean, ids?: readonly string[]): number {
    return this.killWhere((live) => {
      if (!isRevoked(live.token)) return false;
      // Which revocation ended it, for its record: one of the ids this fan-out revoked that its
      // token names, else (ids unknown: a revocation made while no kernel ran) the nearest one
      // of its own and its ancestors that is revoked. None found (a refresh family's): unnamed.
      const t = live.token;
      const named = (i: string) => i === t.id || t.chain.includes(i);
      live.revokedToken = ids?.find(named) ?? [t.id, ...[...t.chain].reverse()].find((i) => isRevoked({ id: i, chain: [] }));
      return true;
    }, "token revoked");
  }

  /**
   * Kills every running agent whose own token was signed with a key `retired` says was retired
   * since: its token no longer verifies, so the agent ends as a revoked one does (`agent.exited`
   * killedBy "key retired", its token then revoked by its end). Returns how many.
   */
  killRetired(retired: (t: { kid: string }) => boolean): number {
    return this.killWhere((live) => retired(live.token), "key retired");
  }

  /** Kills each running agent not already being killed that `test` picks, for `why`; how many it killed (one that exited by itself is not). */
  private killWhere(test: (live: Live) => boolean, why: Live["killedBy"]): number {
    const killed: string[] = [];
    for (const [id, live] of this.live) if (!live.killedBy && test(live) && this.killLive(id, why)) killed.push(id);
    // A removed persona's key is gone already; a revoked or retired one's agent holds its key
    // and the tokens minted for its id until its process closes: they end with the kill.
    if (why !== "persona removed") for (const id of killed) this.endAuthority(id);
    return killed.length;
  }

  /**
   * The registry as attestation and expulsion read it: an ended agent's key a full disk kept in
   * it is gone (refused as if removed: attestation, the sessions it holds) until its removal is
   * stored (storeKept).
   */
  readonly registry: Pick<PersonaStore, "getPersona"> = {
    getPersona: (id) =>
      this.unforgotten.has(id) || this.killed.has(id) || this.keptRegistrations.has(id) ? undefined : this.store.getPersona(id),
  };

  /** Whether a persona is still registered (agent.spawn's ownership rule: nothing new runs for a removed spawner). */
  registered(persona: string): boolean {
    return this.registry.getPersona(persona) !== undefined;
  }

  /**
   * Kills a running agent of `persona`'s (or any, for the admin); false when it already ended or
   * is already being killed (an earlier agent.kill, a revocation, its lifetime): agent.kill's
   * record says it killed the agent once, not once per call while the first kill took effect.
   */
  kill(id: string): boolean {
    if (this.live.get(id)?.killedBy !== undefined || !this.killLive(id, "kill")) return false;
    this.endAuthority(id);
    return true;
  }

  /**
   * A killed agent's process may take a while to close (a sandbox's teardown, a process in
   * uninterruptible sleep): until then its token, the tokens minted for its id and its key held,
   * and its sessions — the agent's, and any opened with the credentials it handed out — went on
   * acting after the kill (agent.kill, a revocation, its lifetime) was answered. Its authority
   * ends at the kill, as at its end: those tokens revoked (what was started under them ends), its
   * persona gone from the registry (its sessions end, requests in flight are refused at their
   * commit, no new session attests, what it started under another token ends). Its end records
   * the rest (agent.exited, the key's removal) once its process has closed.
   */
  private endAuthority(id: string): void {
    const live = this.live.get(id);
    if (live === undefined || live.authorityEnded) return;
    live.authorityEnded = true;
    // Its id registered again by another holder: that holder's key counts as registered still.
    if (this.registeredAgainSince(live.persona, live.registration) === undefined) this.killed.add(live.persona);
    const by = live.killedBy === "kill" || live.killedBy === undefined ? "agent.kill" : live.killedBy;
    // Each step on its own, as at its end: this runs from the lifetime's timer too, where a throw
    // (a store refusing the revocation's row) would end the kernel; one its end revokes again.
    try {
      const revocation = this.revokeAgent(live.token.id, live.persona, live.registration);
      const reason = `${agentUri(id)} killed (${by})`;
      const note = { lost: false, skipped: false };
      live.killRecord = note;
      this.revoked(revocation, live.token.id, live.persona, reason, () => {
        note.lost = true;
        // Its end left the revocation to this record: made again, once (never none on the record).
        if (!note.skipped) return;
        try {
          this.revoked(revocation, live.token.id, live.persona, reason);
        } catch (e) {
          this.log.error({ err: e, agent: id }, "cannot record a killed agent's revocation again");
        }
      });
    } catch (e) {
      this.log.error({ err: e, agent: id }, "cannot revoke a killed agent's token: revoked at its end");
    }
    try {
      this.opts.onForgotten?.(live.persona);
    } catch (e) {
      this.log.error({ err: e, agent: id }, "cannot end a killed agent's sessions");
    }
    // Once the turn's transaction (a removal's fan-out kills in one) has settled: freed on their
    // own, the kill standing whether that one commits or not, and the record true either way.
    queueMicrotask(() => this.freeAllocations(id, live, `${agentUri(id)} killed (${by})`));
  }

  /**
   * Frees the allocations a killed agent (or an agent under it) holds, at the kill: they held its
   * spawner's tree at its limits until the process closed (a sandbox's teardown, a process in D
   * state), though nothing of the agent's may commit any more. Its end frees what is left (none:
   * the rows are gone, nothing is uncharged twice); one the store refuses now is freed then.
   */
  private freeAllocations(id: string, live: Live, why: string): void {
    let freed: number;
    try {
      freed = this.store.transaction(() => releaseAllocationsWithin(this.store, live.persona));
    } catch (e) {
      if (isStorageFull(e)) this.opts.storageFull?.(e);
      else this.log.error({ err: e, agent: id }, "cannot free a killed agent's allocations: freed at its end");
      return;
    }
    if (freed === 0) return;
    // A microtask's throw is an uncaught exception, which ends the kernel: the rows are freed
    // either way, and a record the log refuses is logged (as endAuthority's steps are).
    try {
      this.opts.record({
        op: "resource.freed",
        target: `persona://${live.persona}`,
        persona: live.persona,
        message: `${why}: its allocations were freed`,
        detail: { persona: live.persona, agent: id, token: live.token.id, reason: why, allocationsFreed: freed },
      });
    } catch (e) {
      if (isStorageFull(e)) this.opts.storageFull?.(e);
      else this.log.error({ err: e, agent: id, allocationsFreed: freed }, "cannot record a killed agent's freed allocations");
    }
  }

  /** Personas of killed agents whose process has not closed yet: gone from the registry ({@link endAuthority}). */
  private readonly killed = new Set<string>();

  /**
   * The agent as stored, with live output while it runs; with `output` false, without its output
   * (stdout and stderr null): neither read from the store nor copied from a running agent.
   */
  get(id: string, output = true): AgentRecord | undefined {
    const row = this.store.getAgent(id, output);
    // What a full disk kept from the row is read over it (storeKept).
    const kept = this.keptRows.get(id);
    let a = row;
    if (row && kept) {
      const { stdout, stderr, ...meta } = kept;
      a = { ...row, ...meta, ...(output ? { stdout: stdout ?? row.stdout, stderr: stderr ?? row.stderr } : {}) };
    }
    const live = this.live.get(id);
    if (a && live && output) {
      a.stdout = live.out.stdout.bytes();
      a.stderr = live.out.stderr.bytes();
    }
    return a;
  }

  /** The bytes of the agent's output, stored or captured so far, without reading or copying them. */
  outputBytes(id: string): number {
    const live = this.live.get(id);
    if (live) return live.out.stdout.size + live.out.stderr.size;
    const kept = this.keptRows.get(id);
    if (kept?.stdout !== undefined || kept?.stderr !== undefined)
      return (kept.stdout?.byteLength ?? 0) + (kept.stderr?.byteLength ?? 0);
    return this.store.agentOutputBytes(id);
  }

  /**
   * A page of agents (of `spawner`, and of its spawn `spawnerSpawn` when given), oldest first,
   * after listing position `after`: metadata, never output; read no further than one row past
   * `argsBudget` bytes of their arguments.
   */
  list(
    spawner: string | undefined,
    after: number | undefined,
    limit: number,
    spawnerSpawn?: string | null,
    argsBudget?: number,
  ): AgentSummary[] {
    const page = this.store.listAgents(spawner, after, limit, spawnerSpawn, argsBudget);
    if (this.keptRows.size === 0) return page;
    // What a full disk kept from the rows is read over them (storeKept).
    return page.map((a) => {
      const kept = this.keptRows.get(a.id);
      if (!kept) return a;
      const { stdout: _o, stderr: _e, ...meta } = kept;
      return { ...a, ...meta };
    });
  }

  /** Forgets up to `limit` agents that ended before `before`, with their output (housekeeping, a slice at a time). */
  prune(before: number, limit: number): number {
    return this.store.pruneAgents(before, limit);
  }

  /** Kernel stop: every agent's process group is killed and waited for. */
  async stop(): Promise<void> {
    const waits = [...this.live.entries()].map(
      ([id, l]) =>
        new Promise<void>((resolve) => {
          l.child.once("close", () => resolve());
          this.killLive(id, "kernel");
          setTimeout(resolve, 2000).unref();
        }),
    );
    await Promise.all(waits);
  }
}
