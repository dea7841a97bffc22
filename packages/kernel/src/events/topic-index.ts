import { matchTarget } from "@kpip/protocol";

/**
 * One trie node, every field allocated only when used: a pattern's node chain is most of what a
 * subscription costs, so a node that only leads on holds one child and nothing else.
 */
class Node<T> {
  /** The sole literal child, kept outside a Map until a second one comes (most nodes have one). */
  key: string | undefined = undefined;
  kid: Node<T> | undefined = undefined;
  /** Literal children once there are two or more (then `key`/`kid` are unused). */
  lit: Map<string, Node<T>> | undefined = undefined;
  star: Node<T> | undefined = undefined;
  /** Subscriptions whose pattern ends here. */
  end: Set<T> | undefined = undefined;
  /** Subscriptions whose pattern ends here with `**`. */
  rest: Set<T> | undefined = undefined;

  literal(seg: string): Node<T> | undefined {
    return this.lit ? this.lit.get(seg) : this.key === seg ? this.kid : undefined;
  }

  empty(): boolean {
    return !this.end?.size && !this.rest?.size && !this.star && !this.kid && !this.lit?.size;
  }
}

/** topic://a/b → ["topic:", "a", "b"]. */
function segments(uri: string): string[] | undefined {
  const i = uri.indexOf("://");
  if (i < 0) return undefined;
  const rest = uri.slice(i + 3);
  return rest === "" ? [`${uri.slice(0, i)}:`] : [`${uri.slice(0, i)}:`, ...rest.split("/")];
}

/** How many `/`-segments follow `scheme://` (0 for an empty rest), as the index splits them. */
export function patternSegments(uri: string): number {
  return (segments(uri)?.length ?? 1) - 1;
}

/** How many segments after `scheme://` are the single-segment wildcard `*`. */
export function patternStars(uri: string): number {
  let n = 0;
  for (const seg of segments(uri) ?? []) if (seg === "*") n++;
  return n;
}

/**
 * Subscription patterns in a segment trie: an emit visits the trie nodes its topic can reach and
 * the subscriptions that match. A pattern of n segments is at most n nodes, each reached by an
 * emit at most once, so an emit costs at most the segments of the patterns it reaches, and the
 * nodes it reaches at depth d are at most the ways to put up to k `*` among d segments. The bus
 * bounds a pattern's segments (MAX_PATTERN_SEGMENTS) and its `*` (MAX_PATTERN_STARS), which
 * bounds a subscription's nodes and the walk, whatever the topic's depth or the subscriptions'
 * number. Each candidate is confirmed with {@link matchTarget}, so matching means exactly what
 * it means in a grant.
 */
export class TopicIndex<T extends { pattern: string }> {
  private readonly root = new Node<T>();
  /** Trie nodes held (the root aside): what the patterns cost beyond their own text. */
  nodes = 0;
  /** Trie nodes the last {@link match} visited: what that emit's walk cost. */
  steps = 0;

  add(sub: T): void {
    const segs = segments(sub.pattern);
    if (!segs) return;
    let n = this.root;
    for (let i = 0; i < segs.length; i++) {
      const seg = segs[i] as string;
      if (seg === "**") {
        // `**` means something only last; elsewhere the pattern matches no topic (and costs no node).
        if (i === segs.length - 1) {
          n.rest ??= new Set();
          n.rest.add(sub);
        }
        return;
      }
      n = this.child(n, seg);
    }
    n.end ??= new Set();
    n.end.add(sub);
  }

  remove(sub: T): void {
    const segs = segments(sub.pattern);
    if (!segs) return;
    const path: [Node<T>, string][] = [];
    let n: Node<T> | undefined = this.root;
    let ended = false;
    for (const seg of segs) {
      if (seg === "**") {
        n.rest?.delete(sub);
        ended = true;
        break;
      }
      const next: Node<T> | undefined = seg === "*" ? n.star : n.literal(seg);
      if (!next) return;
      path.push([n, seg]);
      n = next;
    }
    if (!ended) n.end?.delete(sub);
    if (n.end?.size === 0) n.end = undefined;
    if (n.rest?.size === 0) n.rest = undefined;
    // Prune nodes left empty, so an index that held many patterns shrinks with them.
    for (let i = path.length - 1; i >= 0; i--) {
      const [parent, seg] = path[i] as [Node<T>, string];
      const c = (seg === "*" ? parent.star : parent.literal(seg)) as Node<T>;
      if (!c.empty()) break;
      this.unlink(parent, seg);
    }
  }

  /** The subscriptions whose pattern matches `topic`. */
  match(topic: string): T[] {
    const segs = segments(topic);
    const out: T[] = [];
    if (!segs) return out;
    let cur: Node<T>[] = [this.root];
    let steps = 1;
    for (const seg of segs) {
      const next: Node<T>[] = [];
      for (const n of cur) {
        if (n.rest) for (const s of n.rest) out.push(s);
        if (n.star) next.push(n.star);
        const l = n.literal(seg);
        if (l) next.push(l);
      }
      cur = next;
      steps += next.length;
      // No pattern is deeper than its segments: a deep topic stops here, past the deepest pattern it reaches.
      if (cur.length === 0) break;
    }
    for (const n of cur) {
      if (n.rest) for (const s of n.rest) out.push(s);
      if (n.end) for (const s of n.end) out.push(s);
    }
    this.steps = steps;
    return out.filter((s) => matchTarget(s.pattern, topic));
  }

  /** The child of `n` for `seg`, made if missing. */
  private child(n: Node<T>, seg: string): Node<T> {
    if (seg === "*") {
      if (!n.star) {
        n.star = new Node<T>();
        this.nodes++;
      }
      return n.star;
    }
    const c = n.literal(seg);
    if (c) return c;
    const made = new Node<T>();
    this.nodes++;
    if (n.lit) n.lit.set(seg, made);
    else if (n.kid === undefined) [n.key, n.kid] = [seg, made];
    else {
      n.lit = new Map([
        [n.key as string, n.kid],
        [seg, made],
      ]);
      [n.key, n.kid] = [undefined, undefined];
    }
    return made;
  }

  private unlink(parent: Node<T>, seg: string): void {
    this.nodes--;
    if (seg === "*") parent.star = undefined;
    else if (parent.lit) {
      parent.lit.delete(seg);
      if (parent.lit.size === 0) parent.lit = undefined;
    } else if (parent.key === seg) [parent.key, parent.kid] = [undefined, undefined];
  }
}
