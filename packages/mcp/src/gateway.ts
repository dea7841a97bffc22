import type { KernelClient } from "@kpip/client";
import { BUILTIN_FAMILIES, type CborMap, KpipError, type Response, replaceUnprintable, systemDescribe } from "@kpip/protocol";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import {
  CallToolRequestSchema,
  type CallToolResult,
  ErrorCode,
  ListResourcesRequestSchema,
  ListToolsRequestSchema,
  McpError,
  ReadResourceRequestSchema,
  SubscribeRequestSchema,
  type Tool,
  UnsubscribeRequestSchema,
} from "@modelcontextprotocol/sdk/types.js";
import { followDeferred, type ToolCallContext } from "./deferred.js";
import { opTable } from "./describe.js";
import { GrantView } from "./grant.js";
import {
  DEFAULT_MAX_CALLS_PER_SESSION,
  DEFAULT_MAX_SUBSCRIPTIONS_PER_HOST,
  DEFAULT_MAX_TOTAL_CALLS,
  DEFAULT_MAX_TOTAL_UNREAD_BYTES,
  DEFAULT_MAX_UNREAD_BYTES_PER_SESSION,
  DEFAULT_REFUSALS_PER_SESSION,
  DEFAULT_TOTAL_REFUSALS,
  GatewayBudget,
  type GatewayLoad,
  HostBudget,
  type HostLoad,
  monotonicMs,
  RefusalBucket,
  RefusalRate,
} from "./host-budget.js";
import { type CallStreams, CoalescedProgress } from "./progress.js";
import { listResources, readResource } from "./resources.js";
import { answerToResult, inputRefusal, localFailure } from "./results.js";
import {
  InputError,
  inputSchema,
  intentBoundPassed,
  type OpDecl,
  type PassedBound,
  parseToolArgs,
  toolDescription,
} from "./schema.js";
import { type NoticeOutlet, ResourceWatches } from "./watches.js";

export const GATEWAY_NAME = "kpip-mcp";
export const GATEWAY_VERSION = "0.1.0";

export interface GatewayOptions {
  /** Largest tool-call arguments accepted, as JSON bytes (default 1 MiB); larger calls never reach the kernel. */
  maxArgsBytes?: number;
  /** Longest wait between op.status polls while following a DEFERRED op (default 1 s). */
  pollMaxMs?: number;
  /** Most calls one host session may have in flight (default 16); more are refused with HOST_BUSY. */
  maxCallsPerSession?: number;
  /**
   * Most bytes of answers one host session may leave unread (default 64 MiB; counted over
   * HTTP, where an answer waits for the host to read it); past it calls are refused with HOST_BUSY.
   */
  maxUnreadBytesPerSession?: number;
  /** Most calls in flight across all host sessions (default 256); more are refused with HOST_BUSY. */
  maxTotalCalls?: number;
  /**
   * Most bytes of answers all host sessions together may leave unread (default 256 MiB): the
   * per-session bound times the session count is more than a small machine has. Past it calls
   * are refused with HOST_BUSY.
   */
  maxTotalUnreadBytes?: number;
  /**
   * Kernel refusals a second one host session may draw (default 2, bursts 5×); past it its calls
   * get HOST_BUSY before they reach the kernel. Every host shares the gateway's kernel session,
   * which the kernel ends past its refusal flood bound.
   */
  maxRefusalsPerSession?: number;
  /**
   * Kernel refusals a second the host sessions refused within the last minute may draw together
   * (default 10, bursts 5×: under the kernel's default refusal rate of 20 a second per session).
   */
  maxTotalRefusals?: number;
  /**
   * Most subscriptions one host session may hold, shared with another host session or not
   * (default 32: an eighth of the kernel's default 256 per session, which all hosts share); past
   * it resources/subscribe gets HOST_BUSY before the kernel is asked.
   */
  maxSubscriptionsPerHost?: number;
  /**
   * The clock refusal rates are measured on, in ms (default monotonic: `performance.now`, which no
   * step of the wall clock moves): a test steps its own, so what it asserts of a rate does not
   * depend on how fast the machine runs.
   */
  clock?: () => number;
}

interface ToolEntry {
  name: string;
  decl: OpDecl;
  tool: Tool;
}

/**
 * The built-in ops that leave state on the caller's session (the catalogue's `sessionState`),
 * by name: a kernel whose table does not say so (an older build) still gets none as a tool.
 */
const CATALOGUE_SESSION_STATE: ReadonlySet<string> = new Set(
  BUILTIN_FAMILIES.flatMap((f) => f.ops.filter((d) => d.sessionState !== undefined).map((d) => d.op)),
);

/**
 * Ops never offered as tools: those that leave state on the caller's session. Every host shares
 * the gateway's one kernel session, so a subscription or watch one host took would hold that
 * session's slots past the host's session (a host could take them all, then every host's
 * resources/subscribe fails) and send its EVENTs where no host reads them; a bound token would
 * add its authority to every host's calls; an unsubscribe could end another host's watch.
 * Hosts use resources/subscribe, backed by storage watches the gateway ends with the host's
 * session. Declared per op in the catalogue (and sent by `system.describe`), not listed here,
 * so a new such op cannot become a tool unnoticed.
 */
export function heldOnSession(decl: OpDecl): boolean {
  return decl.sessionState !== undefined || CATALOGUE_SESSION_STATE.has(decl.op);
}

/** A tool result that is the kernel's refusal (a FAILURE answer it sent, not the gateway's own). */
function refusedCall(r: CallToolResult): boolean {
  return r._meta?.["kpip/status"] === "FAILURE" && r._meta["kpip/requestId"] !== undefined;
}

/** InvalidParams for arguments past a kernel decode bound, naming it (its name and limit also in `data`). */
function boundError(tool: string, { bound, limit }: PassedBound): McpError {
  const what =
    bound === "maxDepth"
      ? `arguments nested deeper than ${limit} levels`
      : `arguments making a request of more than ${limit} data items (each value, array element, object key and object value counts one)`;
  return new McpError(ErrorCode.InvalidParams, `${tool}: ${what} (the kernel's bound ${bound}, PROTOCOL §5.4)`, {
    bound,
    limit,
  });
}

function positive(name: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer, not ${v}`);
  return v;
}

/** The MCP tool name of an op: dots become underscores (hosts often refuse dots); a clash gets dashes. */
function toolName(op: string, taken: Set<string>): string {
  const n = op.replaceAll(".", "_");
  return taken.has(n) ? op.replaceAll(".", "-") : n;
}

/** `text` in at most `max` UTF-8 bytes, never cut inside a character, every character a label refuses (PROTOCOL §6.2) as `?`. */
function clip(text: string, max: number): string {
  const s = replaceUnprintable(text, () => "?");
  // A string of at most max/3 UTF-16 units is at most max UTF-8 bytes: the usual case, no copy.
  if (s.length <= max / 3) return s;
  const b = Buffer.from(s, "utf8");
  if (b.length <= max) return s;
  return new TextDecoder().decode(b.subarray(0, max)).replace(/\uFFFD+$/, "");
}

/** Longest part of a request id kept in the execution label (JSON-RPC lets a host send any string). */
const MAX_ID_BYTES = 40;

/**
 * What comes before the request id in a call's `context.execution` (a `label(128)`):
 * `mcp[s<n>]:<name>/<version>#`. The tag `s<n>` is the gateway's own, one per host session, so
 * the record tells host sessions apart whatever they call themselves; the name and version are
 * what the host announced, clipped so that the tag and a request id of up to
 * {@link MAX_ID_BYTES} always fit; every character a label refuses (controls, bidi, invisible ones) becomes `?`
 * (a host names itself, and a name the protocol refuses must not fail its calls).
 */
export function executionPrefix(tag: string, host: { name: string; version: string } | undefined): string {
  const head = `mcp[${tag}]:`;
  const who = host ? `${host.name}/${host.version}` : "unknown/?";
  return `${head + clip(who, 128 - Buffer.byteLength(head) - 1 - MAX_ID_BYTES)}#`;
}

/**
 * The gateway: an MCP server on one side, one persona's kernel session on the other. Its
 * tools are the ops the persona's tokens allow; a tool call is one KPIP request through
 * `@kpip/client`, so the kernel checks and audits it like any other. The gateway only
 * translates: it never decides what the kernel would allow or refuse.
 */
export class McpGateway {
  private tools = new Map<string, ToolEntry>();
  private readonly servers = new Set<Server>();
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly budgets = new WeakMap<Server, HostBudget>();
  private readonly inputEnds = new WeakMap<Server, AbortController>();
  private readonly outlets = new WeakMap<Server, NoticeOutlet>();
  /** The streams carrying each host session's calls, when its transport can back up (HTTP). */
  private readonly callStreams = new WeakMap<Server, CallStreams>();
  /** resources/subscribe: kernel storage watches shared by the MCP sessions. */
  readonly watches: ResourceWatches;
  readonly maxArgsBytes: number;
  readonly pollMaxMs: number;
  readonly maxCallsPerSession: number;
  readonly maxUnreadBytesPerSession: number;
  /** The bounds across all host sessions. */
  private readonly total: GatewayBudget;
  readonly maxRefusalsPerSession: number;
  /** Kernel refusals drawn by host sessions refused lately, all together. */
  private readonly refusals: RefusalBucket;
  private readonly refusalRates = new WeakMap<Server, RefusalRate>();
  private readonly clock: () => number;
  /** Host sessions created so far: each has its own tag in the execution label (`mcp[s<n>]:`). */
  private sessionTags = 0;

  private constructor(
    readonly client: KernelClient,
    opts: GatewayOptions,
  ) {
    this.maxArgsBytes = opts.maxArgsBytes ?? 1024 * 1024;
    this.pollMaxMs = opts.pollMaxMs ?? 1000;
    this.maxCallsPerSession = positive("maxCallsPerSession", opts.maxCallsPerSession, DEFAULT_MAX_CALLS_PER_SESSION);
    this.maxUnreadBytesPerSession = positive(
      "maxUnreadBytesPerSession",
      opts.maxUnreadBytesPerSession,
      DEFAULT_MAX_UNREAD_BYTES_PER_SESSION,
    );
    this.total = new GatewayBudget(
      positive("maxTotalCalls", opts.maxTotalCalls, DEFAULT_MAX_TOTAL_CALLS),
      positive("maxTotalUnreadBytes", opts.maxTotalUnreadBytes, DEFAULT_MAX_TOTAL_UNREAD_BYTES),
    );
    this.maxRefusalsPerSession = positive("maxRefusalsPerSession", opts.maxRefusalsPerSession, DEFAULT_REFUSALS_PER_SESSION);
    this.clock = opts.clock ?? monotonicMs;
    this.refusals = new RefusalBucket(positive("maxTotalRefusals", opts.maxTotalRefusals, DEFAULT_TOTAL_REFUSALS), this.clock);
    this.watches = new ResourceWatches(
      client,
      (s) => this.outlets.get(s),
      positive("maxSubscriptionsPerHost", opts.maxSubscriptionsPerHost, DEFAULT_MAX_SUBSCRIPTIONS_PER_HOST),
    );
  }

  /** Reads the kernel's op table (the token must allow system.describe on kernel://) and builds the tools. */
  static async open(client: KernelClient, opts: GatewayOptions = {}): Promise<McpGateway> {
    const g = new McpGateway(client, opts);
    await g.loadTools();
    // After a reconnect the kernel may be another build: read its table again, tell the hosts.
    client.on("state", (s: string) => {
      if (s === "ready" && client.connections > 1) void g.reloadTools();
    });
    return g;
  }

  grants(): GrantView {
    return new GrantView(this.client.heldTokens.filter((_, i) => !this.client.refusedTokens.some((r) => r.index === i)));
  }

  private async loadTools(): Promise<void> {
    const grants = this.grants();
    if (grants.targetsFor("system.describe", ["kernel"]).length === 0) {
      throw new KpipError(
        "PERMISSION",
        "the gateway's token must allow system.describe on kernel:// (it reads the op table to build the tools)",
      );
    }
    const { ops } = (await this.client.op(systemDescribe, "kernel://", {})).payload;
    const table = opTable(ops);
    const tools = new Map<string, ToolEntry>();
    for (const { decl, targets } of grants.allowedOps(table)) {
      if (heldOnSession(decl)) continue;
      const name = toolName(decl.op, new Set(tools.keys()));
      tools.set(name, {
        name,
        decl,
        tool: {
          name,
          title: decl.op,
          description: toolDescription(decl),
          inputSchema: inputSchema(decl, targets) as Tool["inputSchema"],
          annotations: { readOnlyHint: !decl.effects, idempotentHint: decl.idempotent, openWorldHint: false },
        },
      });
    }
    this.tools = tools;
  }

  private async reloadTools(): Promise<void> {
    const before = JSON.stringify([...this.tools.values()].map((t) => t.tool));
    try {
      await this.loadTools();
    } catch {
      return; // keep the last table; calls are still decided by the kernel
    }
    if (JSON.stringify([...this.tools.values()].map((t) => t.tool)) === before) return;
    for (const s of this.servers) void s.sendToolListChanged().catch(() => {});
  }

  /** MCP servers open now, one per host session (for tests and logs). */
  get serverCount(): number {
    return this.servers.size;
  }

  /** Each open host session's calls in flight and unread answer bytes (for tests and logs). */
  hostLoads(): HostLoad[] {
    return [...this.servers].map((s) => (this.budgets.get(s) as HostBudget).load);
  }

  /** Calls each open host session had refused for drawing too many kernel refusals (for tests and logs). */
  refusalThrottled(): number[] {
    return [...this.servers].map((s) => this.refusalRates.get(s)?.refused ?? 0);
  }

  /** Calls in flight and unread answer bytes across all host sessions (for tests and logs). */
  totalLoad(): GatewayLoad {
    return this.total.load;
  }

  /** The bounds of the host session `server` serves (its transport reports deliveries to it). */
  budgetOf(server: Server): HostBudget {
    return this.budgets.get(server) as HostBudget;
  }

  /** Where the notices of `server`'s host session go out, when its transport can back up (HTTP's GET stream). */
  setNoticeOutlet(server: Server, outlet: NoticeOutlet): void {
    this.outlets.set(server, outlet);
  }

  /** The streams that carry the calls of `server`'s host session, when its transport can back up (HTTP's POSTs). */
  setCallStreams(server: Server, streams: CallStreams): void {
    this.callStreams.set(server, streams);
  }

  /**
   * The host of `server` closed its input (stdio): the calls it sent are still answered, but
   * the ops still running for it are cancelled (op.cancel), not followed to their end.
   */
  endInput(server: Server): void {
    this.inputEnds.get(server)?.abort();
  }

  /** The tool names offered now (for tests and logs). */
  get toolNames(): string[] {
    return [...this.tools.keys()];
  }

  /** A new MCP server bound to this gateway: one per MCP session (stdio: one; HTTP: one per host session). */
  createServer(): Server {
    // The low-level Server, not McpServer: the tools and their JSON schemas come from the
    // kernel at run time, and McpServer wants them as zod schemas written in code.
    const server = new Server(
      { name: GATEWAY_NAME, version: GATEWAY_VERSION },
      {
        capabilities: { tools: { listChanged: true }, resources: { subscribe: true } },
        instructions:
          'Tools are the KPIP kernel ops this persona\'s token allows; targets are URIs (obj://<workspace>/<path> for storage). Bytes travel as {"$bytes": "<base64>"}. The kernel checks and audits every call; a refusal comes back as a tool error naming its class (PERMISSION, SEMANTIC, ...). resources/subscribe on an object\'s obj:// URI brings notifications/resources/updated when it is written or deleted (allowed when the token may read it).',
      },
    );
    this.servers.add(server);
    const budget = new HostBudget(this.maxCallsPerSession, this.maxUnreadBytesPerSession, this.total);
    this.budgets.set(server, budget);
    const inputEnded = new AbortController();
    this.inputEnds.set(server, inputEnded);
    const run = <T>(id: string | number, call: () => Promise<T>): Promise<T> => this.track(budget.run(id, call));
    const rate = new RefusalRate(this.maxRefusalsPerSession, this.refusals, this.clock);
    this.refusalRates.set(server, rate);
    /** A call that reaches the kernel: within the host's refusal rate as well. */
    const ask = <T>(id: string | number, call: () => Promise<T>, isRefusal: (answer: T) => boolean = () => false) =>
      run(id, () => rate.run(call, isRefusal));
    server.onclose = () => {
      this.servers.delete(server);
      budget.close();
      void this.watches.dropServer(server);
    };
    // Within the bounds like any call: a tools/list answer is ~20 KB, and a host sending them
    // in batches on connections it never reads would otherwise hold gateway memory unbounded.
    server.setRequestHandler(ListToolsRequestSchema, (_req, extra) =>
      run(extra.requestId, async () => ({ tools: [...this.tools.values()].map((t) => t.tool) })),
    );
    // The host's name and version are fixed once it has initialized: built once, not per call.
    const tag = `s${++this.sessionTags}`;
    let prefix: string | undefined;
    const execution = (requestId: string | number) => {
      if (prefix === undefined) {
        const host = server.getClientVersion();
        if (!host) return executionPrefix(tag, undefined) + clip(String(requestId), MAX_ID_BYTES);
        prefix = executionPrefix(tag, host);
      }
      return prefix + clip(String(requestId), MAX_ID_BYTES);
    };
    server.setRequestHandler(CallToolRequestSchema, (req, extra) => {
      const progress = new CoalescedProgress(
        (n) => extra.sendNotification(n),
        () => this.callStreams.get(server)?.(extra.requestId),
      );
      const ctx: ToolCallContext = {
        execution: execution(extra.requestId),
        signal: extra.signal,
        inputEnded: inputEnded.signal,
        progressToken: extra._meta?.progressToken,
        notify: (n) => progress.notify(n),
        refused: () => rate.note(),
      };
      return ask(
        extra.requestId,
        () => this.callTool(req.params.name, req.params.arguments, ctx).finally(() => progress.end()),
        refusedCall,
      );
    });
    server.setRequestHandler(ListResourcesRequestSchema, (req, extra) =>
      ask(extra.requestId, () =>
        listResources(this.client, execution(extra.requestId), this.grants().listPrefixes(), req.params?.cursor, () =>
          rate.note(),
        ),
      ),
    );
    server.setRequestHandler(ReadResourceRequestSchema, (req, extra) =>
      ask(extra.requestId, () => readResource(this.client, execution(extra.requestId), req.params.uri)),
    );
    server.setRequestHandler(SubscribeRequestSchema, (req, extra) =>
      ask(extra.requestId, () => this.watches.subscribe(server, req.params.uri, execution(extra.requestId)).then(() => ({}))),
    );
    server.setRequestHandler(UnsubscribeRequestSchema, (req, extra) =>
      run(extra.requestId, () => this.watches.unsubscribe(server, req.params.uri).then(() => ({}))),
    );
    return server;
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    const done = () => this.inFlight.delete(p);
    p.then(done, done);
    return p;
  }

  /** Resolves when no call is in flight (a host that closed its input still gets its answers). */
  async drained(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  /** One tool call: checked here for shape only, then one KPIP request; the kernel decides. */
  async callTool(name: string, input: unknown, ctx: ToolCallContext): Promise<CallToolResult> {
    const entry = this.tools.get(name);
    if (!entry)
      throw new McpError(
        ErrorCode.InvalidParams,
        `unknown tool ${JSON.stringify(name)}: tools/list names the ops this token allows`,
      );
    // Measured first, without recursion and stopping at the bound: nesting thousands deep would
    // overflow the stack of the size check and the conversion below (-32603), and 100,000 keys
    // cost ~0.6 s of CPU to convert and encode; the kernel takes neither.
    const passed = intentBoundPassed(input);
    if (passed) throw boundError(name, passed);
    const size = Buffer.byteLength(JSON.stringify(input ?? {}), "utf8");
    if (size > this.maxArgsBytes) {
      throw new McpError(
        ErrorCode.InvalidParams,
        `arguments of ${size} bytes exceed the gateway's limit of ${this.maxArgsBytes} bytes`,
      );
    }
    let intent: { target: string; args: CborMap };
    try {
      intent = parseToolArgs(entry.decl, input);
    } catch (e) {
      if (e instanceof InputError) throw new McpError(ErrorCode.InvalidParams, `${name}: ${e.message}`);
      throw e;
    }
    let r: Response;
    try {
      r = await this.client.request(
        { op: entry.decl.op, target: intent.target, args: intent.args },
        {
          execution: ctx.execution,
          signal: ctx.signal,
        },
      );
    } catch (e) {
      // The client checks the intent before it is sent (a target with "..", a value it cannot
      // encode): the host's input, refused as such; the kernel never saw it.
      const refused = inputRefusal(e, name);
      if (refused) throw refused;
      return localFailure(e);
    }
    if (r.status === "DEFERRED") return followDeferred(this, r, ctx);
    return answerToResult(r, intent.target);
  }

  /** Closes every MCP server (not the kernel client: its owner closes it). */
  async close(): Promise<void> {
    await Promise.all([...this.servers].map((s) => s.close().catch(() => {})));
  }
}
