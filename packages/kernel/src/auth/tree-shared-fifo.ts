/**
 * A map that forgets its oldest entries past a bound in entries and in weight (bytes), in which one
 * persona tree holds at most `1 / share` of either: past its share a tree's new entry replaces its
 * own oldest, so one tree's flood never pushes out more of the others' than that share. The
 * verified-token cache and the derived tokens seen (auth/), and the tree roots found (resources/lineage.ts).
 */
export class TreeSharedFifo<V> {
  private readonly entries = new Map<string, { value: V; tree: string; weight: number }>();
  /** Each tree's keys (oldest first) and their weight. */
  private readonly byTree = new Map<string, { keys: Set<string>; weight: number }>();
  private total = 0;

  constructor(
    private readonly maxEntries: number,
    private readonly maxWeight: number,
    private readonly share: number,
    /** Told of each entry {@link add} forgets to make room (not of those {@link delete}d or replaced). */
    private readonly onEvict?: (key: string, value: V) => void,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** The sum of the entries' weights. */
  get weight(): number {
    return this.total;
  }

  get(key: string): V | undefined {
    return this.entries.get(key)?.value;
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  /**
   * Adds `key` for `tree`, first forgetting what the tree's share and then the whole bound require.
   * A key already held is replaced (its old entry goes first): counted twice, its weight would
   * stay in its tree's and the total forever after one removal.
   */
  add(key: string, value: V, tree: string, weight: number): void {
    this.delete(key);
    const own = this.byTree.get(tree) ?? { keys: new Set<string>(), weight: 0 };
    const entries = this.maxEntries / this.share;
    const weights = this.maxWeight / this.share;
    while (own.keys.size > 0 && (own.keys.size >= entries || own.weight + weight > weights))
      this.evict(own.keys.values().next().value as string);
    while (this.entries.size > 0 && (this.entries.size >= this.maxEntries || this.total + weight > this.maxWeight))
      this.evict(this.entries.keys().next().value as string);
    // Set again: forgetting the tree's last entry above dropped it from the map.
    this.byTree.set(tree, own);
    this.entries.set(key, { value, tree, weight });
    this.total += weight;
    own.keys.add(key);
    own.weight += weight;
  }

  private evict(key: string): void {
    const e = this.entries.get(key);
    this.delete(key);
    if (e !== undefined) this.onEvict?.(key, e.value);
  }

  delete(key: string): boolean {
    const e = this.entries.get(key);
    if (e === undefined) return false;
    this.entries.delete(key);
    this.total -= e.weight;
    const own = this.byTree.get(e.tree);
    if (own !== undefined) {
      own.keys.delete(key);
      own.weight -= e.weight;
      if (own.keys.size === 0) this.byTree.delete(e.tree);
    }
    return true;
  }

  clear(): void {
    this.entries.clear();
    this.byTree.clear();
    this.total = 0;
  }

  /** Every key with its value, oldest first. */
  *[Symbol.iterator](): IterableIterator<[string, V]> {
    for (const [k, e] of this.entries) yield [k, e.value];
  }
}
