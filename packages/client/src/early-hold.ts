/**
 * A first-in first-out hold of sized items with a head index: dropping the oldest is O(1)
 * (an `Array.shift` moved every item left, up to EARLY_EVENTS of them, per drop while full);
 * the dropped slots are reclaimed once they are half of the array.
 */
export class EarlyHold<T extends { size: number }> {
  #items: (T | undefined)[] = [];
  #head = 0;
  #bytes = 0;

  get length(): number {
    return this.#items.length - this.#head;
  }

  get bytes(): number {
    return this.#bytes;
  }

  push(x: T): void {
    this.#items.push(x);
    this.#bytes += x.size;
  }

  /** Drops the oldest item. */
  dropOldest(): void {
    if (this.length === 0) return;
    const old = this.#items[this.#head] as T;
    this.#items[this.#head++] = undefined;
    this.#bytes -= old.size;
    if (this.#head * 2 >= this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
  }

  some(pick: (x: T) => boolean): boolean {
    for (let i = this.#head; i < this.#items.length; i++) if (pick(this.#items[i] as T)) return true;
    return false;
  }

  /** Takes out the items `pick` chooses, oldest first; the others stay, in order. */
  take(pick: (x: T) => boolean): T[] {
    const taken: T[] = [];
    const rest: T[] = [];
    for (let i = this.#head; i < this.#items.length; i++) {
      const x = this.#items[i] as T;
      (pick(x) ? taken : rest).push(x);
    }
    this.#items = rest;
    this.#head = 0;
    for (const x of taken) this.#bytes -= x.size;
    return taken;
  }

  clear(): void {
    this.#items = [];
    this.#head = 0;
    this.#bytes = 0;
  }
}
