import type { CborMap, CborValue } from "@kpip/protocol";
import type { CallOptions, CallResult, KernelClient } from "./client.js";
import type { Subscription } from "./subscription.js";

type Call = KernelClient["call"];

/** system.* */
export class SystemApi {
  constructor(private readonly call: Call) {}
  health(opts?: CallOptions): Promise<{ status: string; uptimeMs: number }> {
    return this.call("system.health", "kernel://", {}, opts).then((r) => r.payload as { status: string; uptimeMs: number });
  }
  info(opts?: CallOptions): Promise<CborMap> {
    return this.call("system.info", "kernel://", {}, opts).then((r) => r.payload as CborMap);
  }
  describe(opts?: CallOptions): Promise<{ ops: { op: string; description: string; targets: string[] }[] }> {
    return this.call("system.describe", "kernel://", {}, opts).then((r) => r.payload as never);
  }
}

export interface StoredObject {
  data: Uint8Array;
  generation: number;
  size: number;
}

/** storage.* on obj://<workspace>/<path>. */
export class StorageApi {
  constructor(private readonly call: Call) {}
  /** Writes bytes (or UTF-8 text). `ifGeneration`: 0 = only if absent, n = only if at generation n. */
  async write(
    target: string,
    data: Uint8Array | string,
    opts: CallOptions & { ifGeneration?: number } = {},
  ): Promise<{ generation: number; size: number }> {
    const { ifGeneration, ...rest } = opts;
    const args: CborMap = { data };
    if (ifGeneration !== undefined) args.ifGeneration = ifGeneration;
    return (await this.call("storage.write", target, args, rest)).payload as { generation: number; size: number };
  }
  async read(target: string, opts?: CallOptions): Promise<StoredObject> {
    return (await this.call("storage.read", target, {}, opts)).payload as unknown as StoredObject;
  }
  async stat(target: string, opts?: CallOptions): Promise<{ generation: number; size: number; updatedAt: number }> {
    return (await this.call("storage.stat", target, {}, opts)).payload as never;
  }
  async delete(target: string, opts: CallOptions & { ifGeneration?: number } = {}): Promise<{ generation: number }> {
    const { ifGeneration, ...rest } = opts;
    return (await this.call("storage.delete", target, ifGeneration === undefined ? {} : { ifGeneration }, rest)).payload as never;
  }
  /** Every entry under obj://ws[/prefix], following PARTIAL pages and their cursors. */
  async *list(
    target: string,
    opts: CallOptions & { pageSize?: number } = {},
  ): AsyncIterable<{ path: string; size: number; generation: number }> {
    const { pageSize, ...rest } = opts;
    let cursor: string | undefined;
    for (;;) {
      const args: CborMap = {};
      if (pageSize !== undefined) args.limit = pageSize;
      if (cursor !== undefined) args.cursor = cursor;
      const r: CallResult = await this.call("storage.list", target, args, rest);
      const p = r.payload as { items: { path: string; size: number; generation: number }[]; cursor?: string };
      yield* p.items;
      if (r.status !== "PARTIAL" || p.cursor === undefined) return;
      cursor = p.cursor;
    }
  }
}

/** token.* */
export class TokensApi {
  constructor(private readonly call: Call) {}
  async mint(
    persona: string,
    spec: {
      rights: { ops: string[]; targets: string[] }[];
      ttlMs: number;
      maxLifetimeMs?: number;
      limits?: Record<string, number>;
      workspaces?: string[];
    },
    opts?: CallOptions,
  ): Promise<{ token: Uint8Array; id: string; exp: number }> {
    return (await this.call("token.mint", `persona://${persona}`, spec as unknown as CborMap, opts)).payload as never;
  }
  async revoke(id: string, opts?: CallOptions): Promise<void> {
    await this.call("token.revoke", `token://${id}`, {}, opts);
  }
  async inspect(id: string, token: Uint8Array, opts?: CallOptions): Promise<CborValue | undefined> {
    return (await this.call("token.inspect", `token://${id}`, { token }, opts)).payload;
  }
}

/** event.* — `subscribe` returns an async iterable that survives reconnects. */
export class EventsApi {
  constructor(private readonly client: KernelClient) {}
  subscribe(pattern: string, opts?: CallOptions & { bufferSize?: number }): Promise<Subscription> {
    return this.client.subscribe(pattern, opts);
  }
  async emit(topic: string, data?: CborValue, opts?: CallOptions): Promise<{ subscribers: number }> {
    return (await this.client.call("event.emit", topic, data === undefined ? {} : { data }, opts)).payload as never;
  }
}
