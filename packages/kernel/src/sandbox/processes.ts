import type { Grant } from "@kpip/protocol";
import { OpError } from "../primitives/types.js";
import { countAtLimit, FIRST_SEGMENT, GrantBounds, inTree, overName, type TreeRoots, treeName } from "../resources/lineage.js";

/** One process tree the kernel started and has not yet seen end. */
export interface ProcessEntry {
  kind: "agent" | "command";
  /** agent id or op id. */
  id: string;
  /** The persona that started it (the spawner / submitter). */
  persona: string;
  /** Ends it (kills the sandbox); the entry leaves the table when the tree has ended. */
  kill(why: string): void;
}

export interface ProcessBounds {
  /** Kernel-wide. */
  max: number;
  perPersona: number;
}

/**
 * Every process the kernel starts, agents and commands alike, counted for its whole life
 * against the kernel-wide bound, the persona tree's bound and the starting grant's (and its
 * ancestor tokens') `agents` limit.
 */
export class ProcessTable {
  private readonly live = new Map<string, ProcessEntry>();

  constructor(
    private readonly bounds: ProcessBounds,
    /** The limits the tokens a grant was minted from hold over it. */
    private readonly grantBounds: GrantBounds = new GrantBounds(),
    /** The top of each persona's tree (the per-persona bound's count). */
    private readonly roots: TreeRoots = FIRST_SEGMENT,
  ) {}

  private key(kind: ProcessEntry["kind"], id: string): string {
    return `${kind}:${id}`;
  }

  get size(): number {
    return this.live.size;
  }

  /** Processes started by `persona` or by any persona under it (its agents, its sub-personas). */
  countFor(persona: string): number {
    let n = 0;
    for (const e of this.live.values()) if (inTree(e.persona, persona)) n++;
    return n;
  }

  /**
   * Throws RESOURCE when one more process for `persona` under `grant` would exceed a bound. The
   * per-persona bound counts the whole tree `persona` lies in (an agent's processes are its
   * spawner's); the grant's `agents` limit counts its subject's tree, and the `agents` limits of
   * the tokens it was minted from count theirs (an agent's spawner's included).
   */
  admit(persona: string, grant: Grant | undefined): void {
    if (this.live.size >= this.bounds.max)
      throw new OpError("RESOURCE", `the kernel already runs ${this.bounds.max} processes (agents and commands)`);
    const root = this.roots.of(persona);
    const tree = this.countFor(root);
    if (tree >= this.bounds.perPersona)
      throw new OpError(
        "RESOURCE",
        `${treeName(root, persona)} already runs ${tree} processes (agents and commands), the most a persona may`,
      );
    const over = countAtLimit(persona, grant, this.grantBounds.of(grant), "agents", (scope) => this.countFor(scope));
    if (over)
      throw new OpError(
        "RESOURCE",
        `agents exceeded for ${overName(over.scope, persona)}: ${over.n} agents and commands running, limit ${over.limit}`,
      );
  }

  add(e: ProcessEntry): void {
    this.live.set(this.key(e.kind, e.id), e);
  }

  remove(kind: ProcessEntry["kind"], id: string): void {
    this.live.delete(this.key(kind, id));
  }

  /** Kills every process started by a persona `gone` says is no longer registered. Returns how many. */
  killWhere(gone: (persona: string) => boolean, why: string): number {
    let n = 0;
    for (const e of [...this.live.values()]) {
      if (gone(e.persona)) {
        e.kill(why);
        n++;
      }
    }
    return n;
  }
}
