import assert from "node:assert/strict";
import { chmodSync, chownSync, lchownSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { untrustedSocket } from "../src/connectors/socket-trust.js";
import { KernelUnavailableError, UntrustedSocketError } from "../src/index.js";

// Run as root (CI), the checks are made for an unprivileged uid, whose files root makes and
// chowns; otherwise for this user, and the cases that need a second user are not run.
const asRoot = process.getuid?.() === 0;
const me = asRoot ? 65534 : (process.getuid?.() ?? 0);
const other = 65533;
const needsRoot = asRoot ? false : "NOT RUN: needs root, to make files of other users";

describe("the socket's path: no other user can change what it names (StrictModes)", () => {
  const base = mkdtempSync(join(tmpdir(), "kpip-trust-"));
  const servers: net.Server[] = [];
  /** A directory of `uid` with `mode`, parents made as needed (root's, 0755). */
  const dir = (path: string, mode: number, uid = me) => {
    mkdirSync(path, { recursive: true });
    chmodSync(path, mode);
    if (asRoot) chownSync(path, uid, uid);
    return path;
  };
  /** A listening socket of `uid` at `path`. */
  const sock = async (path: string, uid = me) => {
    const s = net.createServer((c) => c.destroy());
    servers.push(s);
    await new Promise<void>((r) => s.listen(path, r));
    if (asRoot) chownSync(path, uid, uid);
    return path;
  };
  const untrusted = (e: unknown) => assert.ok(e instanceof UntrustedSocketError, String(e));
  before(() => chmodSync(base, 0o755));
  after(() => {
    for (const s of servers) s.close();
    rmSync(base, { recursive: true, force: true });
  });

  it("trusts the kernel's default home under the user's own home, and a temp dir in sticky /tmp", async () => {
    // /home (root's) / the user's home / .local/state/kpip (the kernel makes kpip 0700)
    const home = dir(join(base, "home", "u"), 0o755);
    dir(join(home, ".local"), 0o755);
    dir(join(home, ".local", "state"), 0o700);
    const kpip = dir(join(home, ".local", "state", "kpip"), 0o700);
    assert.equal(untrustedSocket(await sock(join(kpip, "kernel.sock")), me), undefined);
    // mkdtemp under a sticky, world-writable directory (/tmp): the user's directory cannot be renamed by others.
    const sticky = dir(join(base, "tmp"), 0o1777, 0);
    const t = dir(join(sticky, "kpip-test-x"), 0o700);
    assert.equal(untrustedSocket(await sock(join(t, "kernel.sock")), me), undefined);
    // The user's own socket right in the sticky directory, and reached through the user's link to it.
    const direct = await sock(join(sticky, "k.sock"));
    assert.equal(untrustedSocket(direct, me), undefined);
    const link = join(home, "link.sock");
    symlinkSync(direct, link);
    if (asRoot) lchownSync(link, me, me);
    assert.equal(untrustedSocket(link, me), undefined);
    // A relative path and ".." are resolved like the connect does.
    assert.equal(untrustedSocket(join(kpip, "..", "kpip", "kernel.sock"), me), undefined);
  });

  it("refuses a socket whose directory others may write without the sticky bit, or whose group may", async () => {
    for (const mode of [0o777, 0o775, 0o757]) {
      const d = dir(join(base, `w${mode.toString(8)}`), mode);
      const s = await sock(join(d, "kernel.sock"));
      const e = untrustedSocket(s, me);
      untrusted(e);
      assert.match(String(e?.message), /writable by (others|its group)/);
    }
    // An ancestor, not the socket's own directory: the user's directory in it can be renamed away and replaced.
    const open = dir(join(base, "open"), 0o777);
    const mine = dir(join(open, "mine"), 0o700);
    untrusted(untrustedSocket(await sock(join(mine, "kernel.sock")), me));
  });

  it("refuses a path through another user's directory, or link in a sticky directory", { skip: needsRoot }, async () => {
    const theirs = dir(join(base, "theirs"), 0o755, other);
    const mine = dir(join(theirs, "mine"), 0o700);
    const e = untrustedSocket(await sock(join(mine, "kernel.sock")), me);
    untrusted(e);
    assert.match(String(e?.message), new RegExp(`belongs to uid ${other}`));
    // In sticky /tmp, a link of another user's can be pointed elsewhere by them (it is theirs to replace).
    const sticky = dir(join(base, "tmp2"), 0o1777, 0);
    const real = dir(join(base, "real"), 0o700);
    const target = await sock(join(real, "kernel.sock"));
    const link = join(sticky, "their.sock");
    symlinkSync(target, link);
    lchownSync(link, other, other);
    untrusted(untrustedSocket(link, me));
    // And a socket of theirs is refused wherever it is, naming its owner.
    const s = await sock(join(real, "their-kernel.sock"), other);
    assert.match(
      String(untrustedSocket(s, me)?.message),
      new RegExp(`belongs to uid ${other}, not to this user \\(uid ${me}\\)`),
    );
  });

  it("does not let a missing socket through to a connect someone could race (a sticky directory)", () => {
    const sticky = dir(join(base, "tmp3"), 0o1777, 0);
    const e = untrustedSocket(join(sticky, "absent.sock"), me);
    assert.ok(e instanceof KernelUnavailableError && /ENOENT/.test(e.message), String(e));
  });
});
