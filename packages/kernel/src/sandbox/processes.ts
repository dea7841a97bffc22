import type { Grant } from "@kpip/protocol";
import { OpError } from "../primitives/types.js";

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
 * against the kernel-wide bound, the persona's bound and the starting grant's `agents` limit.
 */
export class ProcessTable {
  private readonly live = new Map<string, ProcessEntry>();

  constructor(private readonly bounds: ProcessBounds) {}

  private key(kind: ProcessEntry["kind"], id: string): string {
    return `${kind}:${id}`;
  }

  get size(): number {
    return this.live.size;
  }

  countFor(persona: string): number {
    let n = 0;
    for (const e of this.live.values()) if (e.persona === persona) n++;
    return n;
  }

  /** Throws RESOURCE when one more process for `persona` under `grant` would exceed a bound. */
  admit(persona: string, grant: Grant | undefined): void {
    if (this.live.size >= this.bounds.max)
      throw new OpError("RESOURCE", `the kernel already runs ${this.bounds.max} processes (agents and commands)`);
    const mine = this.countFor(persona);
    if (mine >= this.bounds.perPersona)
      throw new OpError("RESOURCE", `${persona} already runs ${mine} processes (agents and commands), the most a persona may`);
    const limit = grant?.limits.agents;
    if (limit !== undefined && mine >= limit)
      throw new OpError("RESOURCE", `agents exceeded for ${persona}: ${mine} agents and commands running, limit ${limit}`);
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
