/**
 * Baseline A of `npm run bench`: a plain Node.js Unix-socket echo server. Frames are a 4-byte
 * big-endian length and a body; each complete frame is echoed back, the writes of one read
 * batched into one corked write — as well as plain Node allows, and nothing else.
 * Prints `{ "ready": true }` on stdout when listening on argv[2].
 */
import net from "node:net";

const path = process.argv[2] as string;
const server = net.createServer({ noDelay: true } as net.ServerOpts, (sock) => {
  let buf = Buffer.alloc(0);
  sock.on("data", (d) => {
    buf = buf.length ? Buffer.concat([buf, d]) : d;
    let off = 0;
    sock.cork();
    while (buf.length - off >= 4) {
      const len = buf.readUInt32BE(off);
      if (buf.length - off < 4 + len) break;
      sock.write(buf.subarray(off, off + 4 + len));
      off += 4 + len;
    }
    sock.uncork();
    buf = buf.subarray(off);
  });
  sock.on("error", () => {});
});
server.listen(path, () => process.stdout.write(`${JSON.stringify({ ready: true, pid: process.pid })}\n`));
process.on("SIGTERM", () => process.exit(0));
