import { type KernelClient, KernelUnavailableError, type OpResponse } from "@kpip/client";
import { type ArgsOf, type OpDefinition, storageList, storageRead } from "@kpip/protocol";
import {
  ErrorCode,
  type ListResourcesResult,
  McpError,
  type ReadResourceResult,
  type Resource,
} from "@modelcontextprotocol/sdk/types.js";
import { kernelRefusal } from "./host-budget.js";
import { inputRefusal } from "./results.js";
import { asText } from "./schema.js";

const PAGE = 100;

interface Position {
  /** Index into the prefixes. */
  i: number;
  /** The kernel's cursor inside that prefix. */
  c?: string;
}

const encodeCursor = (p: Position) => Buffer.from(JSON.stringify(p)).toString("base64url");

function decodeCursor(s: string, prefixes: number): Position {
  try {
    const p = JSON.parse(Buffer.from(s, "base64url").toString("utf8")) as Position;
    if (Number.isSafeInteger(p.i) && p.i >= 0 && p.i < prefixes && (p.c === undefined || typeof p.c === "string")) return p;
  } catch {}
  throw new McpError(ErrorCode.InvalidParams, "invalid cursor: pass back a nextCursor this server returned");
}

/** A kernel answer the host must see as an MCP error (resources have no isError form). */
async function ask<D extends OpDefinition>(
  client: KernelClient,
  execution: string,
  def: D,
  target: string,
  args: ArgsOf<D>,
): Promise<OpResponse<D>> {
  try {
    return await client.opRequest(def, target, args, { execution });
  } catch (e) {
    // The client refuses some input before sending it: the host's, as for a tool call (case 299).
    throw (
      inputRefusal(e, def.op) ??
      new McpError(
        ErrorCode.InternalError,
        e instanceof KernelUnavailableError ? `the kernel is unavailable: ${e.message}` : `${def.op}: ${(e as Error).message}`,
      )
    );
  }
}

/**
 * resources/list: the objects under the obj:// prefixes the token may list, one storage.list
 * page per MCP page. A prefix the kernel refuses to list (its grant names objects deeper
 * down) is skipped: the gateway shows what the kernel lets it see, never more.
 */
export async function listResources(
  client: KernelClient,
  execution: string,
  prefixes: string[],
  cursor?: string,
  /** A prefix the kernel refused to list (skipped): the refusal still counts for the host. */
  refused: () => void = () => {},
): Promise<ListResourcesResult> {
  const pos: Position = cursor === undefined ? { i: 0 } : decodeCursor(cursor, prefixes.length);
  for (; pos.i < prefixes.length; pos.i++, pos.c = undefined) {
    const prefix = prefixes[pos.i] as string;
    const r = await ask(client, execution, storageList, prefix, { limit: PAGE, cursor: pos.c });
    if (r.status === "FAILURE") {
      if (r.error === "PERMISSION") {
        refused();
        continue;
      }
      throw kernelRefusal(new McpError(ErrorCode.InternalError, `storage.list ${prefix}: ${r.error}: ${r.message}`));
    }
    const ws = prefix.slice("obj://".length).split("/")[0];
    if (r.status !== "SUCCESS" && r.status !== "PARTIAL") continue;
    const p = r.payload;
    const resources: Resource[] = p.items.map((it) => ({
      uri: `obj://${ws}/${it.path}`,
      name: it.path,
      size: it.size,
      _meta: { "kpip/generation": it.generation },
    }));
    if (r.status === "PARTIAL" && p.cursor !== undefined)
      return { resources, nextCursor: encodeCursor({ i: pos.i, c: p.cursor }) };
    if (resources.length > 0) {
      return pos.i + 1 < prefixes.length ? { resources, nextCursor: encodeCursor({ i: pos.i + 1 }) } : { resources };
    }
  }
  return { resources: [] };
}

/** resources/read: one storage.read, checked and audited by the kernel like a tool call. */
export async function readResource(client: KernelClient, execution: string, uri: string): Promise<ReadResourceResult> {
  if (!uri.startsWith("obj://")) throw new McpError(ErrorCode.InvalidParams, `only obj:// resources can be read, not ${uri}`);
  const r = await ask(client, execution, storageRead, uri, {});
  if (r.status === "FAILURE") throw kernelRefusal(new McpError(ErrorCode.InvalidParams, `${r.error}: ${r.message}`));
  if (r.status !== "SUCCESS") throw new McpError(ErrorCode.InternalError, `storage.read answered ${r.status}`);
  const p = r.payload;
  const text = asText(p.data);
  const meta = { "kpip/generation": p.generation };
  return {
    contents: [
      text !== undefined
        ? { uri, mimeType: "text/plain", text, _meta: meta }
        : { uri, mimeType: "application/octet-stream", blob: Buffer.from(p.data).toString("base64"), _meta: meta },
    ],
  };
}
