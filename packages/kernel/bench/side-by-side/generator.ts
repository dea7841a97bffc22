/**
 * The light load generator of `npm run bench` (`kpip.uds.gen.*`): one Unix-socket session that
 * handshakes like any persona, then keeps `window` pre-encoded REQUESTs in flight, like wrk — each
 * with a fresh id, patched into a template, and every RESPONSE only counted, never decoded. What
 * it measures is the kernel's ceiling with full audit, without `@kpip/client`'s own cost.
 */
import { randomBytes } from "node:crypto";
import net from "node:net";
import {
  attestationTranscript,
  decodeCanonical,
  decodeMessage,
  encodeIntent,
  encodeMessage,
  FrameDecoder,
  type Identity,
  signBytes,
} from "@kpip/protocol";

const HEADER = 16;
const TYPE_RESPONSE = 6;
const TYPE_PING = 8;
const TYPE_PONG = 9;
/** Ids from here to 2^32 all encode as CBOR uint32 (0x1a + 4 bytes), so a template can be patched. */
const FIRST_ID = 0x1000_0000;
const PROBE_ID = 0x1a2b3c4d;

export interface Generator {
  /** Keeps `window` requests in flight for `seconds`; answers the rate after a 200 ms warm-up, and all requests sent. */
  run(window: number, seconds: number): Promise<{ rps: number; sent: number }>;
  close(): void;
}

/** Opens a session as `identity` with `token` bound as handle 1 and returns the generator over it. */
export async function openGenerator(socket: string, identity: Identity, token: Uint8Array, op: string): Promise<Generator> {
  const sock = net.connect(socket);
  sock.setNoDelay(true);
  await new Promise<void>((resolve, reject) => {
    sock.once("connect", resolve);
    sock.once("error", reject);
  });
  const hello = encodeMessage({
    type: "HELLO",
    body: { versions: [1], persona: identity.persona, publicKey: identity.publicKey, instance: randomBytes(16), features: [] },
  });
  const decoder = new FrameDecoder();
  const handshake = new Promise<void>((resolve, reject) => {
    const onData = (d: Buffer) => {
      for (const f of decoder.push(d)) {
        const m = decodeMessage(f);
        if (m.type === "CHALLENGE") {
          const signature = signBytes(identity.privateKey, attestationTranscript(hello.subarray(HEADER), f.body));
          sock.write(encodeMessage({ type: "ATTEST", body: { signature, tokens: [token] } }));
        } else if (m.type === "WELCOME") {
          if (m.body.handles[0] !== 1) reject(new Error("the generator's token was not bound"));
          sock.off("data", onData);
          resolve();
        } else reject(new Error(`unexpected ${m.type} in the handshake`));
      }
    };
    sock.on("data", onData);
    sock.once("error", reject);
  });
  sock.write(hello);
  await handshake;

  const request = (id: number) =>
    encodeMessage(
      {
        type: "REQUEST",
        body: {
          version: 1,
          persona: identity.persona,
          id,
          intent: encodeIntent({ op, target: "kernel://", args: {} }),
          context: { persona: identity.persona },
          caps: [1],
        },
      },
      id,
    );
  const template = request(PROBE_ID);
  const idAt = template.indexOf(Buffer.from([0x1a, 0x1a, 0x2b, 0x3c, 0x4d]), HEADER) + 1;
  if (idAt <= 0) throw new Error("cannot find the request id in the template");
  let nextId = FIRST_ID;
  /** `n` requests with fresh ids, back to back in one buffer (one write). */
  const batch = (n: number): Buffer => {
    const out = Buffer.allocUnsafe(n * template.length);
    for (let i = 0; i < n; i++) {
      const at = i * template.length;
      template.copy(out, at);
      out.writeUInt32BE(nextId, at + 8); // the frame's stream
      out.writeUInt32BE(nextId, at + idAt); // the body's id
      nextId++;
    }
    return out;
  };

  return {
    run(window, seconds) {
      return new Promise((resolve, reject) => {
        let pending = Buffer.alloc(0);
        let sent = 0;
        let inFlight = 0;
        let counted = 0;
        let counting = false;
        /** Set when the window closes: the rate taken then; what is still in flight is drained, not counted. */
        let rate: number | undefined;
        const onData = (d: Buffer) => {
          let buf = pending.length ? Buffer.concat([pending, d]) : d;
          let n = 0;
          while (buf.length >= HEADER) {
            const len = buf.readUInt32BE(12);
            if (buf.length < HEADER + len) break;
            const type = buf[3];
            if (type === TYPE_RESPONSE) n++;
            else if (type === TYPE_PING) sock.write(pong(buf.subarray(HEADER, HEADER + len)));
            else {
              sock.off("data", onData);
              const body = decodeCanonical(buf.subarray(HEADER, HEADER + len));
              return reject(new Error(`the kernel sent message type ${type}: ${JSON.stringify(body)}`));
            }
            buf = buf.subarray(HEADER + len);
          }
          pending = buf.length ? Buffer.from(buf) : Buffer.alloc(0);
          inFlight -= n;
          if (counting) counted += n;
          if (rate !== undefined) {
            if (inFlight === 0) {
              sock.off("data", onData);
              resolve({ rps: rate, sent });
            }
          } else if (n > 0) {
            sock.write(batch(n));
            sent += n;
            inFlight += n;
          }
        };
        sock.on("data", onData);
        sock.write(batch(window));
        sent += window;
        inFlight += window;
        setTimeout(() => {
          const started = process.hrtime.bigint();
          counting = true;
          setTimeout(() => {
            rate = counted / (Number(process.hrtime.bigint() - started) / 1e9);
          }, seconds * 1000);
        }, 200);
      });
    },
    close() {
      sock.destroy();
    },
  };
}

/** A PONG echoing a PING's body (the kernel drops a session that stops answering). */
function pong(body: Buffer): Buffer {
  const frame = Buffer.alloc(HEADER + body.length);
  frame.set([0x4b, 0x50, 1, TYPE_PONG]);
  frame.writeUInt32BE(body.length, 12);
  body.copy(frame, HEADER);
  return frame;
}
