/**
 * The client tests' one harness: a real kernel in its own process, a scripted fake kernel on a
 * Unix socket (for what a real kernel will not do on demand), and the small waits and
 * predicates every file uses.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import type net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";
import { fileURLToPath } from "node:url";
import { encodeMessage, generateIdentity, type Request, type Response } from "@kpip/protocol";
import { outputIncludes } from "@kpip/protocol/testing";
import { type ConnectOptions, type Connector, KernelClient, UdsConnector } from "../src/index.js";
import { challengeFrame, goodbyeFrame, messageServer, welcomeFrame } from "./fake-kernel-wire.js";

/** The kernel package's process entry: the client tests need a kernel, not the CLI. */
const SERVE = fileURLToPath(new URL("../../../kernel/dist/src/serve.js", import.meta.url));

/** A kernel in its own process on a temp home (the client package never imports the kernel). */
export class KernelProcess {
  child: ChildProcess | undefined;
  readonly home: string;
  constructor(
    readonly args: string[] = [],
    home?: string,
  ) {
    this.home = home ?? mkdtempSync(join(tmpdir(), "kpip-client-"));
  }
  get socket(): string {
    return join(this.home, "kernel.sock");
  }
  async start(): Promise<void> {
    const child = spawn(process.execPath, [SERVE, "--home", this.home, "--log-level", "silent", ...this.args], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    this.child = child;
    await outputIncludes(child, "is running");
  }
  signal(sig: NodeJS.Signals): void {
    this.child?.kill(sig);
  }
  async kill(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill("SIGCONT");
    c.kill("SIGKILL");
    await new Promise((r) => c.once("exit", r));
  }
  async stop(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill("SIGINT");
    await new Promise((r) => c.once("exit", r));
  }
  options(extra: Partial<ConnectOptions> = {}): ConnectOptions {
    return {
      socket: this.socket,
      identity: join(this.home, "admin.identity"),
      tokens: [readFileSync(join(this.home, "admin.token"), "utf8")],
      reconnectBackoff: { initialMs: 20, maxMs: 200 },
      ...extra,
    };
  }
  connect(extra: Partial<ConnectOptions> = {}): Promise<KernelClient> {
    return KernelClient.connect(this.options(extra));
  }
  async dispose(): Promise<void> {
    await this.kill();
    rmSync(this.home, { recursive: true, force: true });
  }
}

export { klass, until } from "@kpip/protocol/testing";

/** Kernel processes for one describe block, each killed and its home removed after the block. */
export function kernelPool(): (args?: string[]) => KernelProcess {
  const kernels: KernelProcess[] = [];
  after(async () => {
    for (const k of kernels) await k.dispose();
  });
  return (args = []) => {
    const k = new KernelProcess(args);
    kernels.push(k);
    return k;
  };
}

/** A Unix-socket connector that counts its connection attempts (to wait on a client that retries). */
export function countingConnector(path: string): Connector & { attempts: number } {
  const uds = new UdsConnector(path);
  const c = {
    transport: uds.transport,
    address: uds.address,
    attempts: 0,
    connect: (deadline?: number) => {
      c.attempts++;
      return uds.connect(deadline);
    },
  };
  return c;
}

type Step = (r: Request) => Omit<Response, "version" | "id"> | "silent" | "too-large";

/**
 * A scripted fake kernel: accepts any attestation and answers requests from a queue; a step
 * "too-large" ends the session as a kernel does over an oversized frame (fatal TOO_LARGE).
 */
export class FakeKernel {
  readonly server: net.Server;
  readonly dir = mkdtempSync(join(tmpdir(), "kpip-fake-"));
  readonly path = join(this.dir, "fake.sock");
  hellos: Buffer[] = [];
  /** Each HELLO's maxBody (undefined: none offered). */
  helloMaxBodies: (number | undefined)[] = [];
  /** The maxBody CHALLENGE sets (a real kernel's is min(its own, HELLO.maxBody); a faulty one may not be). */
  maxBody = 1 << 20;
  /** HELLOs to answer with fatal RESOURCE/`shedCode`, as a kernel under a connection flood does (or over a persona tree's session rate). */
  shed = 0;
  shedCode = "HANDSHAKE_SHED";
  /** HELLOs answered by closing the connection without a word, as a gRPC kernel sheds a connection that has not attested. */
  drop = 0;
  /** HELLOs answered before the fake goes mute: later ones are never answered, their connections held open. */
  answerHellos = Number.POSITIVE_INFINITY;
  requests: Request[] = [];
  script: Step[] = [];
  /** Each connection accepted, newest last (to write to the client, or to cut it off). */
  sockets: net.Socket[] = [];
  constructor() {
    this.server = messageServer((s) => {
      this.sockets.push(s);
      return (m, stream) => {
        if (m.type === "HELLO") {
          this.hellos.push(Buffer.from(m.body.instance));
          this.helloMaxBodies.push(m.body.maxBody);
          if (this.drop > 0) {
            this.drop--;
            s.destroy();
            return "stop";
          }
          if (this.hellos.length > this.answerHellos) return undefined;
          if (this.shed > 0) {
            this.shed--;
            const body = { class: "RESOURCE" as const, code: this.shedCode, message: "shed", fatal: true };
            s.end(encodeMessage({ type: "ERROR", body }));
            return undefined;
          }
          s.write(challengeFrame(`s${this.hellos.length}`, "fake", 1000, this.maxBody));
        } else if (m.type === "ATTEST") {
          s.write(welcomeFrame());
        } else if (m.type === "REQUEST") {
          this.requests.push(m.body);
          this.arrivals.set(m.body, { socket: s, stream });
          const step = this.script.shift() ?? (() => ({ status: "SUCCESS" as const }));
          const out = step(m.body);
          if (out === "too-large") {
            const body = { class: "PROTOCOL" as const, code: "TOO_LARGE", message: "frame too large", fatal: true };
            s.end(encodeMessage({ type: "ERROR", body }));
          } else if (out === "silent") this.pending.add(m.body);
          else s.write(encodeMessage({ type: "RESPONSE", body: { version: 1, id: m.body.id, ...out } as Response }, stream));
        } else if (m.type === "PING") {
          s.write(encodeMessage({ type: "PONG", body: { seq: m.body.seq } }));
        } else if (m.type === "GOODBYE") {
          // As a kernel ends a session its peer leaves (every answer here is already written):
          // GOODBYE back, then the close the client's close() waits for (else 2 s, then it gives up).
          s.end(goodbyeFrame());
        }
        return undefined;
      };
    });
  }
  listen(): Promise<void> {
    return new Promise((r) => this.server.listen(this.path, r));
  }
  /** Where each request came from: a "silent" step's request is answered later with {@link answer}. */
  private readonly arrivals = new WeakMap<Request, { socket: net.Socket; stream: number }>();
  /** Answers `r` (a request a step left silent) on the connection and stream it came on. */
  answer(r: Request, out: Omit<Response, "version" | "id">): void {
    const from = this.arrivals.get(r);
    if (!from) throw new Error("answer: a request this fake kernel never received");
    this.pending.delete(r);
    from.socket.write(encodeMessage({ type: "RESPONSE", body: { version: 1, id: r.id, ...out } as Response }, from.stream));
  }
  /** Requests a step left silent and {@link answer} has not answered yet. */
  private readonly pending = new Set<Request>();
  /**
   * Answers every request still left silent on a connection still open. For an after-hook
   * registered before the client's close: a failed assertion must not leave a call in flight,
   * which close() waits for until its deadline (minutes) — a hung run instead of a failure.
   */
  answerPending(out: (r: Request) => Omit<Response, "version" | "id">): void {
    for (const r of this.pending) {
      const from = this.arrivals.get(r);
      if (from && !from.socket.destroyed && from.socket.writable) this.answer(r, out(r));
      this.pending.delete(r);
    }
  }
  /** Starts a script: the next requests are answered by `steps`, in order (then SUCCESS); requests seen so far are forgotten. */
  reset(...steps: Step[]): void {
    this.requests = [];
    this.script = steps;
  }
  /** A client of this fake kernel, as persona alice. */
  connect(extra: Partial<ConnectOptions> = {}): Promise<KernelClient> {
    return KernelClient.connect({
      socket: this.path,
      identity: generateIdentity("alice"),
      retryBackoff: { initialMs: 5, maxMs: 20 },
      reconnectBackoff: { initialMs: 5, maxMs: 20 },
      ...extra,
    });
  }
  close(): void {
    this.server.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
