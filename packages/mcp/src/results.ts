import { KernelUnavailableError, LocalError } from "@kpip/client";
import { CborError, type CborValue, IntentError, type Response } from "@kpip/protocol";
import { type CallToolResult, ErrorCode, McpError } from "@modelcontextprotocol/sdk/types.js";
import { asText, byteStrings, toJson } from "./schema.js";

/** Byte strings larger than this are left out of the JSON text (they are in the embedded resource). */
const INLINE_BYTES = 64 * 1024;

/**
 * A payload as tool content: the JSON text of `head` with the payload under "payload" (bytes as
 * {"$bytes": base64}, so a model can pass them back; those over INLINE_BYTES left out), and every
 * byte string also as an embedded resource with its MIME type (text when it is UTF-8 text, a
 * base64 blob otherwise). The uri of a lone byte string is the target itself (obj://… for storage.read).
 */
function payloadContent(
  head: Record<string, unknown>,
  payload: CborValue | undefined,
  target: string,
): CallToolResult["content"] {
  const blobs = byteStrings(payload);
  const uriOf = (path: string) => (blobs.length === 1 ? target : `${target}#${path}`);
  const json = toJson(payload, (b, path) => (b.length > INLINE_BYTES ? { $resource: uriOf(path), size: b.length } : undefined));
  const content: CallToolResult["content"] = [{ type: "text", text: JSON.stringify({ ...head, payload: json }) }];
  for (const { path, bytes } of blobs) {
    const text = asText(bytes);
    content.push({
      type: "resource",
      resource:
        text !== undefined
          ? { uri: uriOf(path), mimeType: "text/plain", text }
          : { uri: uriOf(path), mimeType: "application/octet-stream", blob: Buffer.from(bytes).toString("base64") },
    });
  }
  return content;
}

/** A SUCCESS, PARTIAL or DEFERRED answer as a tool result: its status and payload (see payloadContent). */
export function successResult(status: string, payload: CborValue | undefined, target: string, requestId: number): CallToolResult {
  return { content: payloadContent({ status }, payload, target), _meta: { "kpip/status": status, "kpip/requestId": requestId } };
}

/**
 * A refusal or failure as a tool error: the error class first, then the message, exactly as
 * decided; then, when the FAILURE carries a payload (op.result of a failed command: its exit
 * code and output), that payload rendered as a success's is, so the host sees why it failed.
 */
export function failureResult(
  errorClass: string,
  message: string,
  requestId?: number,
  detail?: { payload: CborValue; target: string },
): CallToolResult {
  const meta: Record<string, unknown> = { "kpip/status": "FAILURE", "kpip/errorClass": errorClass };
  if (requestId !== undefined) meta["kpip/requestId"] = requestId;
  const content: CallToolResult["content"] = [{ type: "text", text: `FAILURE ${errorClass}: ${message}` }];
  if (detail !== undefined)
    content.push(...payloadContent({ status: "FAILURE", error: errorClass }, detail.payload, detail.target));
  return { isError: true, content, _meta: meta };
}

/** Any final answer of the kernel as a tool result: nothing widened, nothing narrowed. */
export function answerToResult(r: Response, target: string): CallToolResult {
  if (r.status === "FAILURE") {
    const detail = r.payload === undefined ? undefined : { payload: r.payload, target };
    return failureResult(r.error ?? "INTERNAL", r.message ?? "request failed", r.id, detail);
  }
  return successResult(r.status, r.payload, target, r.id);
}

/** A call that got no answer from the kernel: a tool error saying why, at once, instead of a hang. */
export function localFailure(e: unknown): CallToolResult {
  if (e instanceof KernelUnavailableError) {
    return failureResult(
      "UNAVAILABLE",
      `the kernel is unavailable (${e.message}); the gateway is reconnecting, try again shortly`,
    );
  }
  if (e instanceof LocalError) return failureResult(e.name.replace(/Error$/, "").toUpperCase(), e.message);
  throw e;
}

/**
 * The client's refusal of the host's input before anything was sent (a target with "..", a
 * space or over 2048 bytes, a value it cannot encode), as -32602 InvalidParams naming the
 * problem; undefined for anything else. The kernel never saw such a request.
 */
export function inputRefusal(e: unknown, what: string): McpError | undefined {
  if (e instanceof IntentError || e instanceof CborError) return new McpError(ErrorCode.InvalidParams, `${what}: ${e.message}`);
  return undefined;
}
