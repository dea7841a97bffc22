import type { Grant, Token } from "@kpip/protocol";
import { coveringIds } from "../auth/revocations.js";

// A session's bound tokens: session state, filled by the enforcer's bind (auth/enforcer.ts) and
// read by its authorize and by the op context (primitives/types.ts).

/** A token bound to a session: checked once, then named by its small integer handle. */
export interface BoundCapability {
  handle: number;
  token: Token;
  grant: Grant;
  /**
   * Pattern-match results by op, then by target, workspace and domain (the enforcer's key): the
   * grant never changes, so they can be kept.
   */
  decisions: Map<string, Map<string, boolean>>;
  /** How records name it (`h<handle>:<token id>`), once asked. */
  label: string | undefined;
  /** The decision of a request this handle alone allows, once made: the same every time, so made once. */
  allows:
    | {
        readonly allowed: true;
        readonly capIds: string[];
        readonly grant: Grant;
        readonly rateKey: string;
      }
    | undefined;
}

/** A session's handles. Handles are session-local: another session's numbers mean nothing here. */
export class HandleTable {
  private next = 1;
  private readonly map = new Map<number, BoundCapability>();
  /** Handles by each token id whose revocation covers their grant (coveringIds): what a revocation of that id may cover. */
  private readonly byToken = new Map<string, BoundCapability[]>();
  /** Bytes of every token bound so far (bounded by the enforcer's bind). */
  bytes = 0;
  /** Bytes of the decisions every handle caches (bounded by the enforcer's authorize: the only bound on them). */
  decisionBytes = 0;

  /** Forgets the decisions every handle caches (the session's bound on them was reached). */
  forgetDecisions(): void {
    for (const b of this.map.values()) b.decisions.clear();
    this.decisionBytes = 0;
  }

  add(token: Token, grant: Grant): number {
    const handle = this.next++;
    const b: BoundCapability = {
      handle,
      token,
      grant,
      decisions: new Map(),
      label: undefined,
      allows: undefined,
    };
    this.map.set(handle, b);
    coveringIds(grant, (id) => {
      const list = this.byToken.get(id);
      if (list) list.push(b);
      else this.byToken.set(id, [b]);
      return false;
    });
    return handle;
  }
  /**
   * The handles whose grant names one of `ids` (its own id or one up its chain), in handle order:
   * the only ones a revocation of those ids can cover, found without visiting every handle.
   */
  naming(ids: readonly string[]): BoundCapability[] {
    const found = new Set<BoundCapability>();
    for (const id of ids) for (const b of this.byToken.get(id) ?? []) found.add(b);
    return [...found].sort((x, y) => x.handle - y.handle);
  }
  get(handle: number): BoundCapability | undefined {
    return this.map.get(handle);
  }
  all(): BoundCapability[] {
    return [...this.map.values()];
  }
  get size(): number {
    return this.map.size;
  }
}
