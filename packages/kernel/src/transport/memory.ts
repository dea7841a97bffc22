import type { Connection } from "../session/connection.js";

type DataCb = (chunk: Uint8Array) => void;

/** One end of an in-process byte pipe; writes are delivered to the other end asynchronously, in order. */
class MemoryEnd implements Connection {
  readonly peer = "in-memory";
  other: MemoryEnd | undefined;
  private readonly dataCbs: DataCb[] = [];
  private readonly closeCbs: (() => void)[] = [];
  private closed = false;
  private queue: Uint8Array[] = [];
  private scheduled = false;

  constructor(readonly transport: string) {}

  get buffered(): number {
    return 0;
  }

  write(data: Uint8Array): void {
    const o = this.other;
    if (this.closed || !o || o.closed) return;
    // Copy: the writer may reuse its buffer, as a socket's writer may.
    o.queue.push(Uint8Array.from(data));
    if (!o.scheduled) {
      o.scheduled = true;
      setImmediate(() => o.deliver());
    }
  }

  private deliver(): void {
    this.scheduled = false;
    const chunks = this.queue;
    this.queue = [];
    for (const c of chunks) for (const cb of this.dataCbs) cb(c);
  }

  end(): void {
    setImmediate(() => this.destroy());
  }

  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    for (const cb of this.closeCbs) cb();
    this.other?.destroy();
  }

  onData(cb: DataCb): void {
    this.dataCbs.push(cb);
  }
  onClose(cb: () => void): void {
    this.closeCbs.push(cb);
  }
  onDrain(_cb: () => void): void {
    // never backed up: nothing to drain
  }
}

/** A connected pair: one end for the kernel's session, one for a client channel. */
export function memoryPair(): [Connection, Connection] {
  const a = new MemoryEnd("memory");
  const b = new MemoryEnd("memory");
  a.other = b;
  b.other = a;
  return [a, b];
}
