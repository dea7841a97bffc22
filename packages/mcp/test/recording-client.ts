import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { type CallOptions, type CallResult, opCall, opRequest } from "@kpip/client";
import { type CborMap, type Intent, mintToken, type Response, type Right, tokenToString } from "@kpip/protocol";

/**
 * What the gateway puts in each request's context cannot be read back from a kernel that does
 * not record context.execution, so this records the requests the gateway hands to its client.
 */
export class RecordingClient extends EventEmitter {
  readonly sent: { intent: Intent; opts: CallOptions }[] = [];
  refusedTokens = [];
  connections = 1;
  readonly heldTokens: string[];
  /** `table`: more ops for system.describe to answer, `rights`: more rights for the token. */
  constructor(private readonly more: { table?: CborMap[]; rights?: Right[] } = {}) {
    super();
    this.heldTokens = [
      tokenToString(
        mintToken(randomBytes(32), {
          id: randomBytes(16).toString("hex"),
          kid: "k",
          sub: "alice",
          rights: [{ ops: ["system.describe", "system.health"], targets: ["kernel://"] }, ...(this.more.rights ?? [])],
          limits: {},
          nbf: Date.now() - 1000,
          exp: Date.now() + 60_000,
          maxExp: Date.now() + 60_000,
          chain: [],
        }),
      ),
    ];
  }
  async call() {
    const op = { targets: ["kernel"], args: {}, idempotent: true, effects: false };
    return {
      status: "SUCCESS",
      payload: {
        ops: [
          { op: "system.describe", description: "d", ...op },
          { op: "system.health", description: "h", ...op },
          ...(this.more.table ?? []),
        ],
      },
    };
  }
  readonly op = opCall(() => this.call() as Promise<CallResult>);
  readonly opRequest = opRequest((intent, opts) => this.request(intent, opts ?? {}));
  async request(intent: Intent, opts: CallOptions): Promise<Response> {
    this.sent.push({ intent, opts });
    return { version: 1, id: this.sent.length, status: "SUCCESS", payload: { status: "ok" } };
  }
}
