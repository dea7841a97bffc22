/**
 * The receiving process of the Unix-socket floor (floors.ts): listens on argv[2], reads each
 * transfer of argv[3] bytes into nothing and answers one byte when the last byte arrived.
 * Prints `{ "ready": true }` when listening. Plain Node and nothing else: what any server pays.
 */
import net from "node:net";

const [path, size] = [process.argv[2] as string, Number(process.argv[3])];
const server = net.createServer((sock) => {
  let got = 0;
  sock.on("data", (d) => {
    got += d.length;
    while (got >= size) {
      got -= size;
      sock.write(Buffer.of(1));
    }
  });
  sock.on("error", () => {});
});
server.listen(path, () => process.stdout.write(`${JSON.stringify({ ready: true })}\n`));
process.on("SIGTERM", () => process.exit(0));
