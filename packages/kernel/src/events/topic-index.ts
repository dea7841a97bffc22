import { matchTarget } from "@kpip/protocol";

interface Node<T> {
  lit: Map<string, Node<T>> | undefined;
  star: Node<T> | undefined;
  /** Subscriptions whose pattern ends here. */
  end: Set<T>;
  /** Subscriptions whose pattern ends here with `**`. */
  rest: Set<T>;
}

const node = <T>(): Node<T> => ({ lit: undefined, star: undefined, end: new Set(), rest: new Set() });

/** topic://a/b → ["topic:", "a", "b"]. */
function segments(uri: string): string[] | undefined {
  const i = uri.indexOf("://");
  if (i < 0) return undefined;
  const rest = uri.slice(i + 3);
  return rest === "" ? [`${uri.slice(0, i)}:`] : [`${uri.slice(0, i)}:`, ...rest.split("/")];
}

/**
 * Subscription patterns in a segment trie: an emit visits the trie nodes its topic can reach
 * (its depth times the wildcard branches that apply) and the subscriptions that match, never
 * the others. Each candidate is confirmed with {@link matchTarget}, so matching means exactly
 * what it means in a grant.
 */
export class TopicIndex<T extends { pattern: string }> {
  private readonly root = node<T>();

  add(sub: T): void {
    const segs = segments(sub.pattern);
    if (!segs) return;
    let n = this.root;
    for (let i = 0; i < segs.length; i++) {
      const seg = segs[i] as string;
      if (seg === "**") {
        // `**` means something only last; elsewhere the pattern matches no topic.
        if (i === segs.length - 1) n.rest.add(sub);
        return;
      }
      n = this.child(n, seg, true) as Node<T>;
    }
    n.end.add(sub);
  }

  remove(sub: T): void {
    const segs = segments(sub.pattern);
    if (!segs) return;
    const path: [Node<T>, string][] = [];
    let n: Node<T> | undefined = this.root;
    for (const seg of segs) {
      if (seg === "**") {
        n.rest.delete(sub);
        break;
      }
      const next: Node<T> | undefined = this.child(n, seg, false);
      if (!next) return;
      path.push([n, seg]);
      n = next;
    }
    n.end.delete(sub);
    // Prune nodes left empty, so an index that held many patterns shrinks with them.
    for (let i = path.length - 1; i >= 0; i--) {
      const [parent, seg] = path[i] as [Node<T>, string];
      const c = this.child(parent, seg, false) as Node<T>;
      if (c.end.size || c.rest.size || c.star || c.lit?.size) break;
      if (seg === "*") parent.star = undefined;
      else parent.lit?.delete(seg);
    }
  }

  /** The subscriptions whose pattern matches `topic`. */
  match(topic: string): T[] {
    const segs = segments(topic);
    const out: T[] = [];
    if (!segs) return out;
    let cur: Node<T>[] = [this.root];
    for (const seg of segs) {
      const next: Node<T>[] = [];
      for (const n of cur) {
        for (const s of n.rest) out.push(s);
        if (n.star) next.push(n.star);
        const l = n.lit?.get(seg);
        if (l) next.push(l);
      }
      cur = next;
      if (cur.length === 0) break;
    }
    for (const n of cur) {
      for (const s of n.rest) out.push(s);
      for (const s of n.end) out.push(s);
    }
    return out.filter((s) => matchTarget(s.pattern, topic));
  }

  private child(n: Node<T>, seg: string, create: boolean): Node<T> | undefined {
    if (seg === "*") {
      if (!n.star && create) n.star = node();
      return n.star;
    }
    let c = n.lit?.get(seg);
    if (!c && create) {
      n.lit ??= new Map();
      c = node();
      n.lit.set(seg, c);
    }
    return c;
  }
}
