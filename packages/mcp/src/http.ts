import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import { createServer, type Server as HttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { ErrorCode, isInitializeRequest } from "@modelcontextprotocol/sdk/types.js";
import { ConnectionSlots } from "./connection-slots.js";
import type { McpGateway } from "./gateway.js";
import type { HostBudget } from "./host-budget.js";
import type { NoticeOutlet } from "./watches.js";

/** Default bound on host sessions open at once (HttpOptions.maxSessions). */
export const DEFAULT_MAX_SESSIONS = 64;
/** Default bound on request body bytes being read at once, all requests together (HttpOptions.maxTotalBodyBytes). */
export const DEFAULT_MAX_TOTAL_BODY_BYTES = 64 * 1024 * 1024;
/** Default time a request body has to arrive in full (HttpOptions.bodyTimeoutMs). */
export const DEFAULT_BODY_TIMEOUT_MS = 30_000;
/** Default bound on connections open at once (HttpOptions.maxConnections). */
export const DEFAULT_MAX_CONNECTIONS = 256;
/** Default bound on the messages of one JSON-RPC batch (HttpOptions.maxBatch). */
export const DEFAULT_MAX_BATCH = 32;

/**
 * Largest body of a POST outside a session, which can only be an initialize (a host's is a few
 * hundred bytes). The SDK keeps its `clientInfo` and `capabilities` for the session's life,
 * outside every other bound: 4 MiB of small objects held ~33 MB a session, so `--max-sessions`
 * such sessions took gigabytes.
 */
export const MAX_INITIALIZE_BYTES = 64 * 1024;

/** Addresses the HTTP gateway may listen on: loopback only (it has no TLS). */
const LOOPBACK = new Set(["127.0.0.1", "::1", "localhost"]);

export interface HttpOptions {
  host: string;
  /** 0 picks a free port (see the returned url). */
  port: number;
  /** The secret hosts must send as `Authorization: Bearer <secret>`; at least 16 characters. */
  bearer: string;
  /**
   * A host session with no request for this long is closed (default 30 min); the host starts a
   * new one on 404. A POST not yet answered in full (a call running, its answer being read) keeps
   * it, and the time counts from that answer's end; an open GET stream alone does not.
   */
  idleMs?: number;
  /**
   * Most host sessions open at once (default 64). Each holds an MCP server and a transport in
   * the gateway, so a host that initializes in a loop, secret or not, must not grow it without
   * bound; beyond this an initialize gets 503 with Retry-After until a session ends or idles out.
   */
  maxSessions?: number;
  /**
   * Most request body bytes being read at once, all POSTs together (default 64 MiB). One body
   * may be 4 × the gateway's maxArgsBytes; a host opening many connections, each sending most of
   * a body and never finishing it, must not grow the gateway without bound: past this a POST
   * gets 503 with Retry-After.
   */
  maxTotalBodyBytes?: number;
  /** A request body must arrive in full within this time (default 30 s), else 408: a body sent a byte at a time holds its bytes and its connection. */
  bodyTimeoutMs?: number;
  /**
   * Most connections open at once (default 256). Past it a new connection sheds the oldest one
   * that has not yet carried the bearer secret, or is closed at once when every open one has
   * (a peer without the secret cannot lock hosts out by holding idle connections). Each may
   * carry one request at a time (a request pipelined behind another gets 503 and the connection
   * closes), so what the gateway holds for answers not yet read is bounded by connections too.
   */
  maxConnections?: number;
  /**
   * Most messages in one JSON-RPC batch (default 32); a larger batch gets 400. A call refused
   * at a bound still has an answer to hold: this bounds what one POST's refusals can hold.
   */
  maxBatch?: number;
}

export interface HttpGateway {
  url: string;
  /** Host sessions open now. */
  sessions(): number;
  /** Request body bytes being read now, all POSTs together (for tests and logs). */
  bodyBytes(): number;
  /** Requests refused so far for arriving on a connection behind another not yet answered (for tests and logs). */
  pipelinedRefused(): number;
  /** Connections counted now, and so far those shed for newer ones and those refused with every slot trusted (for tests and logs). */
  connections(): { open: number; shed: number; refused: number };
  close(): Promise<void>;
}

/**
 * A host session's GET stream, where its notices outside any call go. The SDK queues what it is
 * given and writes it as the host reads: while the host does not read, notices are held back
 * (coalesced by the watches) instead of queued there without bound.
 */
class GetStream implements NoticeOutlet {
  /** The GET responses open now: the SDK's one stream, and any it is refusing (a second GET gets 409). */
  private readonly open = new Set<ServerResponse>();
  private waiting: { promise: Promise<void>; wake: () => void } | undefined;

  attach(res: ServerResponse): void {
    this.open.add(res);
    res.on("drain", () => this.wake());
    res.once("close", () => {
      this.open.delete(res);
      this.wake();
    });
  }

  blocked(): boolean {
    for (const res of this.open) if (res.writableNeedDrain) return true;
    return false;
  }

  ready(): Promise<void> {
    if (!this.waiting) {
      let wake = () => {};
      const promise = new Promise<void>((r) => {
        wake = r;
      });
      this.waiting = { promise, wake };
    }
    return this.waiting.promise;
  }

  /** The host reads again, or the stream or the session ended. */
  wake(): void {
    const w = this.waiting;
    this.waiting = undefined;
    w?.wake();
  }
}

/**
 * The POST response carrying a call, as the outlet of its progress notices: like the GET stream,
 * the SDK queues what it is given while the host does not read.
 */
class PostStream implements NoticeOutlet {
  constructor(private readonly res: ServerResponse) {}

  blocked(): boolean {
    return this.res.writableNeedDrain && !this.res.destroyed;
  }

  ready(): Promise<void> {
    const res = this.res;
    return new Promise((resolve) => {
      const done = () => {
        res.off("drain", done).off("close", done);
        resolve();
      };
      res.on("drain", done).on("close", done);
    });
  }
}

/** Refused configuration of the HTTP gateway (a non-loopback address, a weak secret). */
export class GatewayConfigError extends Error {
  override name = "GatewayConfigError";
}

const digest = (s: string) => createHash("sha256").update(s, "utf8").digest();

/** Constant-time: both sides are hashed to 32 bytes first, so neither content nor length leaks. */
function bearerMatches(header: string | undefined, secret: Buffer): boolean {
  const m = /^Bearer (.+)$/i.exec(header ?? "");
  return timingSafeEqual(digest(m?.[1] ?? ""), secret) && m !== null;
}

/** Host and Origin must name the loopback listener: a web page cannot reach it by DNS rebinding. */
function sameOrigin(req: IncomingMessage, port: number): boolean {
  const ok = (host: string) => {
    const i = host.lastIndexOf(":");
    const name = (i > 0 && !host.endsWith("]") ? host.slice(0, i) : host).replace(/^\[|\]$/g, "");
    return LOOPBACK.has(name) && (i < 0 || host.slice(i + 1) === String(port));
  };
  if (!req.headers.host || !ok(req.headers.host)) return false;
  const origin = req.headers.origin;
  if (origin === undefined) return true;
  try {
    return ok(new URL(origin).host);
  } catch {
    return false;
  }
}

function refuse(res: ServerResponse, code: number, message: string, headers: Record<string, string> = {}): void {
  res.writeHead(code, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32000, message }, id: null }));
}

/** Refuses what the HTTP gateway will not serve: a non-loopback address (no TLS), a short secret. */
export function checkHttpOptions(o: HttpOptions): void {
  if (!LOOPBACK.has(o.host)) {
    throw new GatewayConfigError(
      `the MCP HTTP gateway listens on loopback only (127.0.0.1, ::1, localhost), not ${o.host}: it has no TLS`,
    );
  }
  if (o.bearer.length < 16) throw new GatewayConfigError("the bearer secret must be at least 16 characters");
  for (const k of ["maxSessions", "maxTotalBodyBytes", "bodyTimeoutMs", "maxConnections", "maxBatch"] as const) {
    const v = o[k];
    if (v !== undefined && !(Number.isSafeInteger(v) && v >= 1))
      throw new GatewayConfigError(`${k} must be a positive integer, not ${v}`);
  }
}

/**
 * MCP over Streamable HTTP on a loopback address, every request carrying the operator's
 * bearer secret. One MCP server (and transport) per host session; all of them act as the
 * gateway's one persona.
 */
export async function serveHttp(gateway: McpGateway, o: HttpOptions): Promise<HttpGateway> {
  checkHttpOptions(o);
  const secret = digest(o.bearer);
  const sessions = new Map<string, StreamableHTTPServerTransport>();
  const lastSeen = new Map<string, number>();
  /**
   * Per host session: its budget, and the response that carried each call still in use. Only
   * the end of that response delivers (or abandons) the call: a second POST naming an id still in
   * use is refused, and its connection closing must not release the first call's answer bytes
   * or cancel it (that would let a host step past its unread bound).
   */
  const hosts = new WeakMap<
    StreamableHTTPServerTransport,
    {
      budget: HostBudget;
      carriers: Map<string | number, ServerResponse>;
      notices: GetStream;
      /** POSTs of this session not yet answered in full (a call running, an answer being read): it is not idle. */
      open: number;
    }
  >();
  let port = o.port;
  // Hosts that go away without DELETE would otherwise keep their server and transport forever.
  const idleMs = o.idleMs ?? 30 * 60_000;
  const maxSessions = o.maxSessions ?? DEFAULT_MAX_SESSIONS;
  /** Initializations under way: counted against maxSessions before their session id exists. */
  let opening = 0;
  const maxBody = 4 * gateway.maxArgsBytes;
  const bodies = { reading: 0, max: o.maxTotalBodyBytes ?? DEFAULT_MAX_TOTAL_BODY_BYTES };
  const bodyTimeoutMs = o.bodyTimeoutMs ?? DEFAULT_BODY_TIMEOUT_MS;
  const readBody = (req: IncomingMessage) => readJson(req, maxBody, bodies, bodyTimeoutMs);
  const maxBatch = o.maxBatch ?? DEFAULT_MAX_BATCH;
  const slots = new ConnectionSlots(o.maxConnections ?? DEFAULT_MAX_CONNECTIONS);
  const tooLarge = (body: unknown) => Array.isArray(body) && body.length > maxBatch;
  const sweep = setInterval(
    () => {
      const now = Date.now();
      for (const [id, t] of sessions) {
        // A host waiting on a call that runs longer than idleMs is still there (its GET stream
        // alone does not count: a host that forgot its session would hold it for ever).
        if ((hosts.get(t)?.open ?? 0) > 0) continue;
        if (now - (lastSeen.get(id) ?? 0) > idleMs) void t.close().catch(() => {});
      }
    },
    Math.max(10, Math.min(idleMs / 2, 60_000)),
  );
  sweep.unref();

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    if (!sameOrigin(req, port)) return refuse(res, 403, "Host or Origin is not this loopback listener");
    if (!bearerMatches(req.headers.authorization, secret)) {
      return refuse(res, 401, "missing or wrong bearer secret", { "www-authenticate": 'Bearer realm="kpip-mcp"' });
    }
    slots.trust(req.socket);
    if (new URL(req.url ?? "/", "http://x").pathname !== "/mcp") return refuse(res, 404, "the MCP endpoint is /mcp");
    const sid = req.headers["mcp-session-id"];
    if (typeof sid === "string") {
      const t = sessions.get(sid);
      if (!t) return refuse(res, 404, "unknown or ended MCP session");
      lastSeen.set(sid, Date.now());
      const host = hosts.get(t);
      if (host && req.method === "POST") {
        host.open++;
        res.once("close", () => {
          host.open--;
          // Idle from the end of its last answer, not from its request (the session may have ended meanwhile).
          if (sessions.get(sid) === t) lastSeen.set(sid, Date.now());
        });
      }
      if (req.method === "GET") host?.notices.attach(res);
      if (req.method !== "POST") return t.handleRequest(req, res);
      // Read here so the calls it carries are known: their answers count against the session's
      // bounds until this response ends, and a call whose connection closes is cancelled.
      const read = await readBody(req);
      if (!read.ok) return refuseBody(res, read);
      const body = read.json;
      if (tooLarge(body)) return refuse(res, 400, `a batch may hold at most ${maxBatch} messages`);
      const ids = host ? requestIds(body).filter((id) => !host.carriers.has(id)) : [];
      if (host && ids.length > 0) {
        for (const id of ids) host.carriers.set(id, res);
        res.once("close", () => {
          const reason = "the host closed the connection of this call";
          for (const id of ids) {
            if (host.carriers.get(id) !== res) continue;
            host.carriers.delete(id);
            if (!host.budget.delivered(id)) continue;
            t.onmessage?.({ jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: id, reason } });
            // The SDK keeps the answers a response carried (and its ids' routes) until every call
            // on it is answered, and a cancelled call never is: answered here, into the closed
            // stream, so the SDK lets go of them now, not when the session ends (case 217).
            const answer = { jsonrpc: "2.0" as const, id, error: { code: ErrorCode.ConnectionClosed, message: reason } };
            void t.send(answer).catch(() => {});
          }
        });
      }
      return t.handleRequest(req, res, body);
    }
    if (req.method !== "POST") return refuse(res, 400, "no MCP session: initialize first");
    // Refused by its size before it is parsed (413, as any body over its bound): the smaller of
    // the two, never more than the operator's body bound (a small --max-args-bytes).
    const read = await readJson(req, Math.min(maxBody, MAX_INITIALIZE_BYTES), bodies, bodyTimeoutMs);
    if (!read.ok) return refuseBody(res, read);
    const body = read.json;
    if (!isInitializeRequest(body)) return refuse(res, 400, "no MCP session: initialize first");
    // The transport refuses these too, but only after a server exists: refused here, nothing is made.
    const accept = req.headers.accept ?? "";
    if (!accept.includes("application/json") || !accept.includes("text/event-stream"))
      return refuse(res, 406, "Not Acceptable: Accept must list application/json and text/event-stream");
    if (!isJson(req.headers["content-type"]))
      return refuse(res, 415, "Unsupported Media Type: Content-Type must be application/json");
    if (sessions.size + opening >= maxSessions) {
      const retry = String(Math.max(1, Math.ceil(Math.min(idleMs, 60_000) / 1000)));
      return refuse(res, 503, `${maxSessions} MCP sessions are open: end one (DELETE) or wait`, { "retry-after": retry });
    }
    const t = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      maxRequestBodySize: 4 * gateway.maxArgsBytes,
      onsessioninitialized: (id) => {
        sessions.set(id, t);
        lastSeen.set(id, Date.now());
      },
    });
    const notices = new GetStream();
    t.onclose = () => {
      notices.wake();
      if (!t.sessionId) return;
      sessions.delete(t.sessionId);
      lastSeen.delete(t.sessionId);
    };
    opening++;
    const mcp = gateway.createServer();
    const budget = gateway.budgetOf(mcp);
    budget.tracksDelivery = true;
    const carriers = new Map<string | number, ServerResponse>();
    hosts.set(t, { budget, carriers, notices, open: 0 });
    // Every answer handed to the transport counts against the session's bounds until its
    // response ends: not only calls' answers (counted when they end) but refusals, pings and
    // the SDK's own errors, which a host could otherwise pile up unread without bound.
    const send = t.send.bind(t);
    t.send = (message, options) => {
      const id = "id" in message && ("result" in message || "error" in message) ? message.id : undefined;
      if (id !== undefined && carriers.has(id)) budget.hold(id, message);
      return send(message, options);
    };
    gateway.setNoticeOutlet(mcp, notices);
    gateway.setCallStreams(mcp, (id) => {
      const res = carriers.get(id);
      return res && new PostStream(res);
    });
    try {
      await mcp.connect(t);
      await t.handleRequest(req, res, body);
    } finally {
      opening--;
      // Refused before the session began (a header check of the SDK's own): nothing else
      // would ever close this server and transport.
      if (t.sessionId === undefined) await mcp.close().catch(() => {});
    }
  };

  // The backstop for bodies the gateway never reads (refused for their secret, Host or path):
  // Node cuts off a request not received in full within this (its default is 5 minutes).
  const requestTimeout = 2 * bodyTimeoutMs;
  const serverOptions = { requestTimeout, headersTimeout: Math.min(60_000, requestTimeout) };
  /** Requests on each connection not yet answered: one at a time is served. */
  const open = new WeakMap<Socket, number>();
  let pipelined = 0;
  const server: HttpServer = createServer(serverOptions, (req, res) => {
    const sock = req.socket;
    const before = open.get(sock) ?? 0;
    open.set(sock, before + 1);
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      open.set(sock, (open.get(sock) ?? 1) - 1);
    };
    res.once("finish", end).once("close", end);
    // Node parses pipelined requests at once and keeps their answers in memory while the host
    // does not read: a request behind another on its connection is refused, and the
    // connection closes after it (its refusal is small, and Node stops reading once such
    // answers wait).
    if (before > 0) {
      pipelined++;
      return refuse(res, 503, "one request at a time on a connection: wait for the answer, or open another", {
        connection: "close",
        "retry-after": "1",
      });
    }
    handle(req, res).catch((e) => {
      if (!res.headersSent) refuse(res, 500, (e as Error).message);
      else res.destroy();
    });
  });
  // Before Node's own handler, which still runs for a connection destroyed here (its parser sees a closed socket).
  server.prependListener("connection", (sock: Socket) => slots.admit(sock));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, o.host, () => resolve());
  });
  port = (server.address() as AddressInfo).port;
  const hostPart = o.host.includes(":") ? `[${o.host}]` : o.host;
  return {
    url: `http://${hostPart}:${port}/mcp`,
    sessions: () => sessions.size,
    bodyBytes: () => bodies.reading,
    pipelinedRefused: () => pipelined,
    connections: () => ({ open: slots.count, shed: slots.shed, refused: slots.refused }),
    close: async () => {
      clearInterval(sweep);
      await Promise.all([...sessions.values()].map((t) => t.close().catch(() => {})));
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** The ids of the JSON-RPC requests (not notifications or responses) in a body, one message or a batch. */
function requestIds(body: unknown): (string | number)[] {
  const ids: (string | number)[] = [];
  for (const m of Array.isArray(body) ? body : [body]) {
    const o = m as { method?: unknown; id?: unknown } | null;
    if (o && typeof o.method === "string" && (typeof o.id === "string" || typeof o.id === "number")) ids.push(o.id);
  }
  return ids;
}

/** The media type is application/json (parameters such as charset allowed), as the SDK checks it. */
function isJson(ct: string | undefined): boolean {
  return (ct ?? "").split(";")[0]?.trim().toLowerCase() === "application/json";
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

type BodyRead = { ok: true; json: unknown } | { ok: false; status: 400 | 408 | 413 | 503; message: string };

/** A body refused before it was read in full: the rest is never read, so the connection ends with the answer. */
function refuseBody(res: ServerResponse, r: BodyRead & { ok: false }): void {
  if (res.destroyed) return;
  const headers: Record<string, string> = { connection: "close" };
  if (r.status === 503) headers["retry-after"] = "1";
  refuse(res, r.status, r.message, headers);
}

/**
 * The body as JSON (bad JSON is null: refused as not an initialize, or by the transport). Its
 * bytes count in `pool` while they are read: a body over `max` (by its Content-Length, before
 * anything is read, or as it arrives) is 413; one that would take `pool` past its bound is 503;
 * one not received in full within `timeoutMs` is 408.
 */
function readJson(
  req: IncomingMessage,
  max: number,
  pool: { reading: number; max: number },
  timeoutMs: number,
): Promise<BodyRead> {
  const declared = Number(req.headers["content-length"]);
  if (declared > max)
    return Promise.resolve({ ok: false, status: 413, message: `request body of ${declared} bytes is over ${max} bytes` });
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const finish = (r: BodyRead) => {
      clearTimeout(timer);
      req.off("data", onData).off("end", onEnd).off("error", onGone).off("close", onGone);
      pool.reading -= size;
      // Not read further: a refused body's bytes stay with the sender (the connection closes).
      if (!r.ok) req.pause();
      resolve(r);
    };
    const onData = (c: Buffer) => {
      if (size + c.length > max) return finish({ ok: false, status: 413, message: `request body over ${max} bytes` });
      if (pool.reading + c.length > pool.max)
        return finish({
          ok: false,
          status: 503,
          message: `the gateway is reading ${pool.reading} bytes of request bodies (its limit is ${pool.max}): retry`,
        });
      size += c.length;
      pool.reading += c.length;
      chunks.push(c);
    };
    const onEnd = () => {
      let json: unknown = null;
      try {
        // Fatal: bytes that are not UTF-8 are a parse error, not U+FFFD in the host's text (two
        // keys differing only there would become one, and a text be sent other than it was).
        json = JSON.parse(UTF8.decode(Buffer.concat(chunks, size)));
      } catch {}
      finish({ ok: true, json });
    };
    const onGone = () => finish({ ok: false, status: 400, message: "the request body was cut off" });
    const timer = setTimeout(
      () => finish({ ok: false, status: 408, message: `the request body did not arrive in full within ${timeoutMs} ms` }),
      timeoutMs,
    );
    req.on("data", onData).on("end", onEnd).on("error", onGone).on("close", onGone);
  });
}
