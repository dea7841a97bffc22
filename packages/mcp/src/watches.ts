import { type KernelClient, KernelUnavailableError } from "@kpip/client";
import { KpipError } from "@kpip/protocol";
import type { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { ErrorCode, McpError } from "@modelcontextprotocol/sdk/types.js";
import { DEFAULT_MAX_SUBSCRIPTIONS_PER_HOST, HOST_BUSY, kernelRefusal } from "./host-budget.js";
import { inputRefusal } from "./results.js";

type Watch = Awaited<ReturnType<KernelClient["watch"]>>;

/**
 * Where a host session's notifications outside any call go out (over HTTP, its GET stream).
 * The transport queues whatever it is given without bound, so a notice is held back while the
 * host is not reading.
 */
export interface NoticeOutlet {
  /** True while the host is not reading: a notice sent now would only queue in the gateway. */
  blocked(): boolean;
  /** Resolves when the host reads again, or its stream or session has ended. */
  ready(): Promise<void>;
}

type Meta = Record<string, unknown>;

interface Sending {
  again: Meta | undefined;
}

/** A subscription being made: the session may unsubscribe or end before the kernel watch exists. */
interface Ticket {
  uri: string;
  cancelled: boolean;
}

/** One object some MCP sessions subscribed to: one kernel watch, however many sessions. */
interface Entry {
  watch: Watch;
  servers: Set<Server>;
  /** Notifications being written per session, and the latest change that came meanwhile. */
  sending: Map<Server, Sending>;
}

/**
 * resources/subscribe backed by the kernel's storage watches (PROTOCOL §9.8). The kernel
 * decides: a subscription is one `storage.watch` on the object's URI, authorized as
 * `storage.read`, so a host learns of changes only to objects its persona may read. The
 * client watches again after a reconnect, so subscriptions survive a kernel restart.
 *
 * A host that reads slowly costs bounded memory: per session and object at most one
 * notification is being written and one more is owed (changes in between are one update: a
 * host re-reads the resource anyway), and none is written while the host's stream is backed
 * up (a host that never reads it would otherwise have every change queued for it).
 *
 * Every host shares the gateway's one kernel session and its bound on watches: a host session
 * may hold at most `maxPerHost` subscriptions (being made included), so one host cannot take
 * every slot and leave the others none. Past it a new subscription is refused with HOST_BUSY
 * before the kernel is asked. Shared ones count too, though they take no slot of the kernel
 * session: counting only the watches a session held alone let a second session join each of
 * the first's watches, the first leave it, and the second hold any number alone, never counted.
 */
export class ResourceWatches {
  private readonly byUri = new Map<string, Entry>();
  private readonly opening = new Map<string, Promise<Entry>>();
  /** Subscriptions being made, per session: cancelled by unsubscribe or the session's end. */
  private readonly pending = new Map<Server, Set<Ticket>>();
  /** Sessions that ended: a subscription they still send is not made. */
  private readonly ended = new WeakSet<Server>();

  constructor(
    private readonly client: KernelClient,
    /** The outlet of a session's notices, when its transport has one that can back up (HTTP). */
    private readonly outletOf: (server: Server) => NoticeOutlet | undefined = () => undefined,
    /** Most subscriptions one session may hold, shared or not (GatewayOptions.maxSubscriptionsPerHost). */
    readonly maxPerHost: number = DEFAULT_MAX_SUBSCRIPTIONS_PER_HOST,
  ) {}

  /** The subscriptions `server` holds, shared or not, and those it is making. */
  private held(server: Server): number {
    let n = this.pending.get(server)?.size ?? 0;
    for (const e of this.byUri.values()) if (e.servers.has(server)) n++;
    return n;
  }

  async subscribe(server: Server, uri: string, execution: string): Promise<void> {
    if (!uri.startsWith("obj://") || uri.includes("*"))
      throw new McpError(ErrorCode.InvalidParams, `only an object's obj:// URI can be subscribed to, not ${uri}`);
    if (this.ended.has(server)) return;
    // A repeated subscription to what the session holds is no new one.
    if (!this.byUri.get(uri)?.servers.has(server)) {
      const n = this.held(server);
      if (n >= this.maxPerHost)
        throw new McpError(
          HOST_BUSY,
          `this host session holds ${n} subscriptions (the gateway's limit is ${this.maxPerHost}): unsubscribe from one, then retry`,
          { retryable: true },
        );
    }
    // The kernel watch is made while the session may end or unsubscribe: they cancel the
    // ticket, and a watch nobody holds once it is made is released, never left to the kernel.
    const ticket: Ticket = { uri, cancelled: false };
    let mine = this.pending.get(server);
    if (!mine) {
      mine = new Set();
      this.pending.set(server, mine);
    }
    mine.add(ticket);
    try {
      for (;;) {
        const entry = this.byUri.get(uri) ?? (await this.open(uri, execution));
        if (ticket.cancelled) return await this.release(uri, entry);
        // Released meanwhile (another session's subscription was cancelled): watch again.
        if (this.byUri.get(uri) !== entry) continue;
        entry.servers.add(server);
        return;
      }
    } finally {
      mine.delete(ticket);
      if (mine.size === 0 && this.pending.get(server) === mine) this.pending.delete(server);
    }
  }

  async unsubscribe(server: Server, uri: string): Promise<void> {
    for (const t of this.pending.get(server) ?? []) if (t.uri === uri) t.cancelled = true;
    const entry = this.byUri.get(uri);
    if (!entry?.servers.delete(server)) return;
    entry.sending.delete(server);
    await this.release(uri, entry);
  }

  /** An MCP session ended: its subscriptions go (also those still being made), and the watches nobody else needs. */
  async dropServer(server: Server): Promise<void> {
    this.ended.add(server);
    for (const t of this.pending.get(server) ?? []) t.cancelled = true;
    await Promise.all([...this.byUri.keys()].map((uri) => this.unsubscribe(server, uri)));
  }

  /** The kernel watch of an object no session holds any more is ended. */
  private async release(uri: string, entry: Entry): Promise<void> {
    if (entry.servers.size > 0 || this.byUri.get(uri) !== entry) return;
    this.byUri.delete(uri);
    await entry.watch.unsubscribe().catch(() => {});
  }

  /** The objects watched now (for tests and logs). */
  get uris(): string[] {
    return [...this.byUri.keys()];
  }

  private open(uri: string, execution: string): Promise<Entry> {
    let p = this.opening.get(uri);
    if (!p) {
      p = this.watch(uri, execution).finally(() => this.opening.delete(uri));
      this.opening.set(uri, p);
    }
    return p;
  }

  private async watch(uri: string, execution: string): Promise<Entry> {
    let watch: Watch;
    try {
      watch = await this.client.watch(uri, { execution });
    } catch (e) {
      if (e instanceof KpipError) throw kernelRefusal(new McpError(ErrorCode.InvalidParams, `${e.errorClass}: ${e.message}`));
      if (e instanceof KernelUnavailableError)
        throw new McpError(ErrorCode.InternalError, `the kernel is unavailable: ${e.message}`);
      throw inputRefusal(e, "resources/subscribe") ?? e;
    }
    const entry: Entry = { watch, servers: new Set(), sending: new Map() };
    this.byUri.set(uri, entry);
    void this.follow(uri, entry);
    return entry;
  }

  /** Each change notice becomes notifications/resources/updated to every session subscribed. */
  private async follow(uri: string, entry: Entry): Promise<void> {
    try {
      for await (const e of entry.watch) {
        const d = e.data as { generation?: unknown; kind?: unknown } | undefined;
        const meta = { "kpip/generation": d?.generation, "kpip/kind": d?.kind };
        for (const s of entry.servers) this.notify(entry, s, uri, meta);
      }
    } catch {
      // The iteration cannot fail; if it ever did, the subscription simply ends.
    }
    // Ended by the kernel (the authority lapsed and could not be renewed) or by the client
    // closing, not released here: the sessions still subscribed are told once (MCP has no notice
    // for a subscription's end), so a host reads the resource again and learns why, instead of
    // waiting for changes that will never be told.
    if (this.byUri.get(uri) !== entry) return;
    this.byUri.delete(uri);
    for (const s of entry.servers) void s.sendResourceUpdated({ uri, _meta: { "kpip/ended": true } }).catch(() => {});
  }

  private notify(entry: Entry, server: Server, uri: string, meta: Meta): void {
    const busy = entry.sending.get(server);
    if (busy) {
      busy.again = meta;
      return;
    }
    const state: Sending = { again: meta };
    entry.sending.set(server, state);
    void this.send(entry, server, uri, state);
  }

  /** Sends the session's latest change of `uri`, and again while changes come meanwhile; waits while the host does not read. */
  private async send(entry: Entry, server: Server, uri: string, state: Sending): Promise<void> {
    for (;;) {
      const outlet = this.outletOf(server);
      if (outlet?.blocked()) await outlet.ready();
      const m = state.again;
      state.again = undefined;
      if (!m || !entry.servers.has(server)) break;
      await server.sendResourceUpdated({ uri, _meta: m }).catch(() => {});
    }
    if (entry.sending.get(server) === state) entry.sending.delete(server);
  }
}
