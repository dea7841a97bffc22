import type { Grant } from "@kpip/protocol";
import { OpError } from "../primitives/types.js";
import {
  countAtLimit,
  FIRST_SEGMENT,
  GrantBounds,
  inTree,
  limitRefusal,
  type TreeRoots,
  treeBoundRefusal,
} from "../resources/lineage.js";

/** One process tree the kernel started: counted from its start until its scratch directory is gone. */
export interface ProcessEntry {
  kind: "agent" | "command";
  /** agent id or op id. */
  id: string;
  /** The persona that started it (the spawner / submitter). */
  persona: string;
  /** When it started (ms), set by {@link ProcessTable.add}: a registration of `persona` made since is another holder's. */
  since?: number;
  /** Ends it (kills the sandbox); asked only while the tree runs. */
  kill(why: string): void;
}

/**
 * A process's place in the table, from {@link ProcessTable.add}. The place is held until the
 * process's scratch directory has been removed, not only until the process ends: a process
 * that leaves millions of files or gigabytes there and ends at once would otherwise free its
 * place before the disk does, and a persona could queue removals (and fill the disk) without
 * bound while every count said there was room.
 */
export interface ProcessSlot {
  /** The process tree has ended: it still counts, but is never killed again (its pid may be another process's now). */
  ended(): void;
  /** Its scratch directory's removal settled, done or failed: the place is free. Only the first call counts. */
  release(): void;
}

export interface ProcessBounds {
  /** Kernel-wide. */
  max: number;
  perPersona: number;
  /** The admin persona: it alone may take the last {@link adminReserve} places of {@link max}. */
  admin?: string;
  /** Of {@link max}, the places only the admin persona may take (at most max - 1: someone else can always start one). */
  adminReserve?: number;
}

/**
 * Of a kernel-wide bound `max`, the places `persona` may not take: the last `reserve` are the
 * admin's alone (as maxSessions' adminReserve), so that trees filling the rest leave the admin
 * room to act; at most max - 1, so some persona other than the admin can always take one.
 */
export function reservedFrom(persona: string, max: number, admin: string | undefined, reserve: number | undefined): number {
  if (admin === undefined || persona === admin || !reserve) return 0;
  return Math.max(0, Math.min(reserve, max - 1));
}

/**
 * Every process the kernel starts, agents and commands alike, counted for its whole life and
 * until its scratch directory is gone ({@link ProcessSlot}) against the kernel-wide bound, the
 * persona tree's bound and the starting grant's (and its ancestor tokens') `agents` limit.
 */
export class ProcessTable {
  /** Each place held, by identity: an id used again (an agent's) while its last process's directory goes is another place. */
  private readonly held = new Set<{ entry: ProcessEntry; running: boolean }>();

  constructor(
    private readonly bounds: ProcessBounds,
    /** The limits the tokens a grant was minted from hold over it. */
    private readonly grantBounds: GrantBounds = new GrantBounds(),
    /** The top of each persona's tree (the per-persona bound's count). */
    private readonly roots: TreeRoots = FIRST_SEGMENT,
  ) {}

  /** Places held: processes running and processes ended whose scratch directory is still being removed. */
  get size(): number {
    return this.held.size;
  }

  /** Of {@link size}, the processes that ended and wait for their scratch directory to go. */
  get ending(): number {
    let n = 0;
    for (const h of this.held) if (!h.running) n++;
    return n;
  }

  /** Places held by `persona` or by any persona under it (its agents, its sub-personas). */
  countFor(persona: string, kind?: ProcessEntry["kind"]): number {
    let n = 0;
    for (const h of this.held) if (inTree(h.entry.persona, persona) && (kind === undefined || h.entry.kind === kind)) n++;
    return n;
  }

  /**
   * What a refusal adds when places are held by processes that ended (their scratch directories
   * are being removed): a place frees itself, and a retry shortly after succeeds. Without
   * `count`, not how many (a tree above the requester: its other members' processes).
   */
  private pending(within?: string, count = true): string {
    let n = 0;
    for (const h of this.held) if (!h.running && (within === undefined || inTree(h.entry.persona, within))) n++;
    if (n === 0) return "";
    return count
      ? ` (${n} of them ended, their scratch directories being removed: retry shortly)`
      : " (some ended, their scratch directories being removed: retry shortly)";
  }

  /**
   * Throws RESOURCE when one more process for `persona` under `grant` would exceed a bound. The
   * per-persona bound counts the whole tree `persona` lies in (an agent's processes are its
   * spawner's); the grant's `agents` limit counts its subject's tree, and the `agents` limits of
   * the tokens it was minted from count theirs (an agent's spawner's included).
   */
  admit(persona: string, grant: Grant | undefined): void {
    const { max } = this.bounds;
    const reserved = reservedFrom(persona, max, this.bounds.admin, this.bounds.adminReserve);
    if (this.held.size >= max - reserved)
      throw new OpError(
        "RESOURCE",
        this.held.size >= max
          ? `the kernel already runs ${max} processes (agents and commands)${this.pending()}`
          : `the kernel already runs ${this.held.size} processes (agents and commands): the last ${reserved} of ${max} are reserved for the admin${this.pending()}`,
      );
    const root = this.roots.of(persona);
    const tree = this.countFor(root);
    if (tree >= this.bounds.perPersona)
      throw new OpError(
        "RESOURCE",
        treeBoundRefusal(root, persona, {
          held: () => `already runs ${tree} processes (agents and commands), the most a persona may`,
          what: "processes (agents and commands)",
          bound: "maxProcessesPerPersona",
          limit: this.bounds.perPersona,
        }) + this.pending(root, root === persona),
      );
    const over = countAtLimit(persona, grant, this.grantBounds.of(grant), "agents", (scope) => this.countFor(scope));
    if (over)
      throw new OpError(
        "RESOURCE",
        limitRefusal(
          "agents",
          over.scope,
          persona,
          `${over.n} agents and commands running, limit ${over.limit}${this.pending(over.scope)}`,
          `one more would pass its limit ${over.limit}${this.pending(over.scope, false)}`,
        ),
      );
  }

  /** Counts a process that has just started (after {@link admit}); the slot says when it ended and when its place is free. */
  add(e: ProcessEntry): ProcessSlot {
    const h = { entry: { ...e, since: e.since ?? Date.now() }, running: true };
    this.held.add(h);
    return {
      ended: () => {
        h.running = false;
      },
      release: () => {
        h.running = false;
        this.held.delete(h);
      },
    };
  }

  /**
   * Kills every running process started by a persona `gone` says is no longer registered (or is
   * registered again since the process started: another holder's id). Returns how many.
   */
  killWhere(gone: (persona: string, since: number) => boolean, why: string): number {
    let n = 0;
    for (const h of [...this.held]) {
      if (h.running && gone(h.entry.persona, h.entry.since ?? 0)) {
        h.entry.kill(why);
        n++;
      }
    }
    return n;
  }
}
