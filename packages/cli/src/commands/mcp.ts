import type { KernelClient } from "@kpip/client";
import { checkHttpOptions, GatewayConfigError, McpGateway, serveHttp, serveStdio } from "@kpip/mcp";
import type { Command } from "../command.js";
import { CONNECT_OPTIONS, connectFromFlags, readTokenArg } from "../connect.js";
import { EXIT, reportError, UsageError } from "../util.js";

/** "127.0.0.1:8080" or "[::1]:8080" → host and port. */
function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(s);
  const port = Number(m?.[3]);
  if (!m || port > 65535) throw new UsageError(`--http takes HOST:PORT (e.g. 127.0.0.1:8787), not ${s}`);
  return { host: (m[1] ?? m[2]) as string, port };
}

const say = (s: string) => process.stderr.write(`kpip mcp: ${s}\n`);

export const mcpCommand: Command = {
  name: "mcp",
  summary: "serve MCP (stdio or loopback HTTP) as one persona: tools are the ops its token allows",
  usage:
    "kpip mcp --identity F --token @FILE [--http 127.0.0.1:PORT --bearer @FILE] [--max-args-bytes N] [--max-calls N] [--max-unread-bytes N] [--max-total-calls N] [--max-total-unread-bytes N] [--max-refusals N] [--max-total-refusals N] [--max-subscriptions N] (stdout carries MCP over stdio)",
  example: "kpip mcp --identity ~/.kpip/alice.identity --token @alice.token",
  options: {
    ...CONNECT_OPTIONS,
    http: { type: "string", description: "serve Streamable HTTP on HOST:PORT instead of stdio (loopback only: 127.0.0.1, ::1)" },
    bearer: {
      type: "string",
      description: "with --http: the secret hosts send as Authorization: Bearer (text or @file; default $KPIP_MCP_BEARER)",
    },
    "max-args-bytes": { type: "string", description: "largest tool-call arguments accepted, in JSON bytes (default 1048576)" },
    "max-sessions": {
      type: "string",
      description: "with --http: most host sessions open at once; more initializations get 503 (default 64)",
    },
    "max-calls": {
      type: "string",
      description: "most tool calls one host session has running at once; more get a retryable -32029 (default 16)",
    },
    "max-unread-bytes": {
      type: "string",
      description:
        "with --http: most answer bytes one host session may leave unread; past it calls get -32029 (default 67108864)",
    },
    "max-total-calls": {
      type: "string",
      description: "most tool calls running at once across all host sessions; more get a retryable -32029 (default 256)",
    },
    "max-total-unread-bytes": {
      type: "string",
      description:
        "with --http: most answer bytes all host sessions together may leave unread; past it calls get -32029 (default 268435456)",
    },
    "max-total-body-bytes": {
      type: "string",
      description: "with --http: most request body bytes being read at once, all POSTs together; past it 503 (default 67108864)",
    },
    "body-timeout-ms": {
      type: "string",
      description: "with --http: a request body must arrive in full within this time, else 408 (default 30000)",
    },
    "max-connections": {
      type: "string",
      description:
        "with --http: most connections open at once; past it a new one sheds the oldest that has not shown the bearer secret, or is closed (default 256)",
    },
    "max-batch": {
      type: "string",
      description: "with --http: most messages in one JSON-RPC batch; larger batches get 400 (default 32)",
    },
    "max-refusals": {
      type: "string",
      description:
        "kernel refusals a second one host session may draw (bursts 5x); past it its calls get a retryable -32029 (default 2)",
    },
    "max-total-refusals": {
      type: "string",
      description:
        "kernel refusals a second the host sessions refused lately may draw together (bursts 5x); keep it under the kernel's auditRefusalRate (default 10)",
    },
    "max-subscriptions": {
      type: "string",
      description:
        "most subscriptions one host session may hold, shared with other host sessions or not (resources/subscribe; all hosts share the kernel session's maxSubscriptionsPerSession); past it -32029 (default 32)",
    },
  },
  async run(v, pos) {
    if (pos.length) throw new UsageError(`unexpected arguments: ${pos.join(" ")}`);
    let maxArgsBytes: number | undefined;
    if (v["max-args-bytes"] !== undefined) {
      maxArgsBytes = Number(v["max-args-bytes"]);
      if (!Number.isSafeInteger(maxArgsBytes) || maxArgsBytes < 1024)
        throw new UsageError("--max-args-bytes must be an integer ≥ 1024");
    }
    const positive = (flag: string): number | undefined => {
      if (v[flag] === undefined) return undefined;
      const n = Number(v[flag]);
      if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`--${flag} must be a positive integer`);
      return n;
    };
    const maxCallsPerSession = positive("max-calls");
    const maxUnreadBytesPerSession = positive("max-unread-bytes");
    const maxTotalCalls = positive("max-total-calls");
    const maxTotalUnreadBytes = positive("max-total-unread-bytes");
    const maxRefusalsPerSession = positive("max-refusals");
    const maxTotalRefusals = positive("max-total-refusals");
    const maxSubscriptionsPerHost = positive("max-subscriptions");
    const listen = v.http === undefined ? undefined : parseListen(v.http as string);
    for (const flag of ["max-sessions", "max-total-body-bytes", "body-timeout-ms", "max-connections", "max-batch"])
      if (v[flag] !== undefined && listen === undefined) throw new UsageError(`--${flag} goes with --http`);
    const maxSessions = positive("max-sessions");
    const maxTotalBodyBytes = positive("max-total-body-bytes");
    const bodyTimeoutMs = positive("body-timeout-ms");
    const maxConnections = positive("max-connections");
    const maxBatch = positive("max-batch");
    let bearer: string | undefined;
    if (listen) {
      const b = (v.bearer as string | undefined) ?? process.env.KPIP_MCP_BEARER;
      if (!b) throw new UsageError("--http needs a bearer secret: --bearer @FILE or $KPIP_MCP_BEARER");
      bearer = readTokenArg(b);
      try {
        checkHttpOptions({ ...listen, bearer });
      } catch (e) {
        throw new UsageError((e as Error).message);
      }
    } else if (v.bearer !== undefined) throw new UsageError("--bearer goes with --http");

    let client: KernelClient | undefined;
    try {
      // failFast: while the kernel is away a tool call is answered at once with a tool error
      // instead of hanging the host; the client reconnects, re-attests and re-subscribes.
      client = await connectFromFlags(v, { shm: true, failFast: true, reconnectBackoff: { initialMs: 50, maxMs: 1000 } });
      const kc = client;
      kc.on("state", (s: string) => {
        if (s === "reconnecting") say("kernel connection lost; reconnecting (tool calls fail fast meanwhile)");
        else if (s === "ready" && kc.connections > 1) say("kernel connection restored");
      });
      const gateway = await McpGateway.open(client, {
        ...(maxArgsBytes === undefined ? {} : { maxArgsBytes }),
        ...(maxCallsPerSession === undefined ? {} : { maxCallsPerSession }),
        ...(maxUnreadBytesPerSession === undefined ? {} : { maxUnreadBytesPerSession }),
        ...(maxTotalCalls === undefined ? {} : { maxTotalCalls }),
        ...(maxTotalUnreadBytes === undefined ? {} : { maxTotalUnreadBytes }),
        ...(maxRefusalsPerSession === undefined ? {} : { maxRefusalsPerSession }),
        ...(maxTotalRefusals === undefined ? {} : { maxTotalRefusals }),
        ...(maxSubscriptionsPerHost === undefined ? {} : { maxSubscriptionsPerHost }),
      });
      const what = `persona ${client.persona}, ${gateway.toolNames.length} tools`;
      if (listen && bearer !== undefined) {
        const http = await serveHttp(gateway, {
          ...listen,
          bearer,
          ...(maxSessions === undefined ? {} : { maxSessions }),
          ...(maxTotalBodyBytes === undefined ? {} : { maxTotalBodyBytes }),
          ...(bodyTimeoutMs === undefined ? {} : { bodyTimeoutMs }),
          ...(maxConnections === undefined ? {} : { maxConnections }),
          ...(maxBatch === undefined ? {} : { maxBatch }),
        });
        say(`serving MCP on ${http.url} as ${what}`);
        await new Promise<void>((resolve) => {
          process.once("SIGINT", resolve);
          process.once("SIGTERM", resolve);
        });
        await http.close();
      } else {
        say(`serving MCP on stdio as ${what}`);
        await Promise.race([
          serveStdio(gateway),
          new Promise<void>((resolve) => {
            process.once("SIGINT", resolve);
            process.once("SIGTERM", resolve);
          }),
        ]);
      }
      await gateway.close();
      return EXIT.OK;
    } catch (e) {
      if (e instanceof GatewayConfigError) throw new UsageError(e.message);
      return reportError(e, false);
    } finally {
      await client?.close().catch(() => {});
    }
  },
};
