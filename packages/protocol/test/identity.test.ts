import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { generateIdentity, publicKeyFault, publicKeyFromRaw, verifyBytes } from "../src/identity.js";

/* Which 32 bytes are a usable Ed25519 public key: OpenSSL takes any, the kernel and the CLI must not. */

// The eight points of small order, as the Ed25519 literature lists them (canonical encodings).
const SMALL_ORDER = [
  "0100000000000000000000000000000000000000000000000000000000000000",
  "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "0000000000000000000000000000000000000000000000000000000000000000",
  "0000000000000000000000000000000000000000000000000000000000000080",
  "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
  "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
  "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
  "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
].map((h) => Buffer.from(h, "hex"));

describe("Ed25519 public keys", () => {
  it("a key of small order verifies a signature anyone can make; publicKeyFault refuses all eight, and every generated key passes", () => {
    const identity = SMALL_ORDER[0] as Buffer;
    // Why it matters: R the identity, S 0, over any message (OpenSSL does not refuse the key).
    assert.ok(verifyBytes(publicKeyFromRaw(identity), Buffer.from("any message"), Buffer.concat([identity, Buffer.alloc(32)])));
    for (const k of SMALL_ORDER) assert.match(publicKeyFault(k) ?? "", /small order/, k.toString("hex"));
    for (let i = 0; i < 64; i++) assert.equal(publicKeyFault(generateIdentity("a").publicKey), undefined);
  });

  it("refuses bytes that encode no point, or a point in a non-canonical way", () => {
    assert.match(publicKeyFault(Buffer.alloc(32, 2)) ?? "", /not a point of the Ed25519 curve/);
    // y = p (the identity's y plus p): not below 2^255 - 19.
    assert.match(publicKeyFault(Buffer.from(`ed${"ff".repeat(30)}7f`, "hex")) ?? "", /not a canonical encoding/);
    // The identity with its sign bit set: x is 0, so the bit must be too.
    assert.match(publicKeyFault(Buffer.from(`01${"00".repeat(30)}80`, "hex")) ?? "", /x is 0 with its sign bit set/);
    assert.match(publicKeyFault(Buffer.alloc(31)) ?? "", /32 bytes/);
  });
});
