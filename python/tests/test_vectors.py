"""Every vector in spec/vectors/, and the worked examples of §7.7 and Appendix A."""

from __future__ import annotations

import hashlib
import hmac
import unittest

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kpip import cbor, tokens
from kpip.errors import KpipError, TokenError
from kpip.frames import FrameDecoder, encode_frame
from kpip.identity import Identity, attestation_transcript
from kpip.intent import decode_intent, encode_intent, intent_hash
from kpip.messages import decode_message, encode_message

from .vectors import from_json, load

FRAMES, INTENTS, TOKENS = load("frames.json"), load("intents.json"), load("tokens.json")
ATTESTATION = load("attestation.json")


def decode_all(hexs: str) -> list:
    d = FrameDecoder()
    out = [decode_message(f) for f in d.push(bytes.fromhex(hexs))]
    d.end()
    return out


class FrameVectors(unittest.TestCase):
    def test_enough_vectors(self) -> None:
        self.assertGreaterEqual(len(FRAMES["valid"]) + len(INTENTS["valid"]) + len(TOKENS["valid"]), 25)
        self.assertGreaterEqual(len(FRAMES["invalid"]) + len(INTENTS["invalid"]) + len(TOKENS["invalid"]), 25)

    def test_valid_frames_decode_and_reencode(self) -> None:
        for v in FRAMES["valid"]:
            with self.subTest(v["name"]):
                frames = FrameDecoder().push(bytes.fromhex(v["hex"]))
                self.assertEqual(len(frames), 1)
                f = frames[0]
                want = v["message"]
                self.assertEqual((f.type, f.stream, f.flags), (want["type"], want["stream"], want["flags"]))
                self.assertEqual(decode_message(f).body, from_json(want["body"]))
                again = encode_message(want["type"], from_json(want["body"]), want["stream"])
                self.assertEqual(again.hex(), v["hex"])

    def test_invalid_frames_fail_with_class_and_code(self) -> None:
        for v in FRAMES["invalid"]:
            with self.subTest(v["name"]):
                with self.assertRaises(KpipError) as cm:
                    decode_all(v["hex"])
                self.assertEqual((cm.exception.error_class, cm.exception.code), (v["error"]["class"], v["error"]["code"]))

    def test_frames_split_byte_by_byte(self) -> None:
        whole = "".join(v["hex"] for v in FRAMES["valid"])
        d = FrameDecoder()
        got = []
        for b in bytes.fromhex(whole):
            got += d.push(bytes([b]))
        d.end()
        self.assertEqual([f.type for f in got], [v["message"]["type"] for v in FRAMES["valid"]])


class IntentVectors(unittest.TestCase):
    def test_valid_intents(self) -> None:
        for v in INTENTS["valid"]:
            with self.subTest(v["name"]):
                raw = bytes.fromhex(v["hex"])
                self.assertEqual(decode_intent(raw), from_json(v["intent"]))
                self.assertEqual(intent_hash(raw).hex(), v["sha256"])
                self.assertEqual(encode_intent(from_json(v["intent"])).hex(), v["hex"])

    def test_invalid_intents_are_semantic(self) -> None:
        for v in INTENTS["invalid"]:
            with self.subTest(v["name"]):
                with self.assertRaises(KpipError) as cm:
                    decode_intent(bytes.fromhex(v["hex"]))
                self.assertEqual((cm.exception.error_class, cm.exception.code), ("SEMANTIC", v["error"]["code"]))

    def test_worked_example_7_7(self) -> None:
        intent = {
            "op": "storage.write",
            "target": "obj://ws1/notes/today.txt",
            "args": {"data": b"hello", "mode": "create"},
            "constraints": {"deadline": 1767225600000},
        }
        raw = encode_intent(intent)
        self.assertEqual(len(raw), 112)
        self.assertEqual(hashlib.sha256(raw).hexdigest(), "53dd241d35190bec3b299039fe4cc436964471d054a782c29e5d1260d5afb789")

    def test_key_order_example_5_2(self) -> None:
        self.assertEqual(cbor.encode({"b": 1, "aa": 2, "a": 3, "é": 4, "z": 5}).hex(), "a561610361620161 7a05626161 0262c3a904".replace(" ", ""))


class TokenVectors(unittest.TestCase):
    root = bytes.fromhex(TOKENS["rootKey"])

    def test_valid_tokens(self) -> None:
        for v in TOKENS["valid"]:
            with self.subTest(v["name"]):
                sig = hmac.new(self.root, b"kpip-token-v1\0" + bytes.fromhex(v["claimsHex"]), hashlib.sha256).digest()
                self.assertEqual(sig.hex(), v["chain"][0])
                for i, c in enumerate(v["caveatsHex"]):
                    sig = tokens.chain_step(sig, bytes.fromhex(c))
                    self.assertEqual(sig.hex(), v["chain"][i + 1])
                t = tokens.decode_token(bytes.fromhex(v["hex"]))
                self.assertEqual(t.claims, from_json(v["claims"]))
                self.assertEqual(list(t.caveats), v["caveats"])
                self.assertEqual(tokens.derived_id(t), v["id"])
                self.assertEqual(t.sig.hex(), v["chain"][-1])
                self.assertEqual(t.encode().hex(), v["hex"])
                self.assertEqual(t.to_text(), v["base64url"])
                self.assertEqual(tokens.decode_token(v["base64url"]), t)
                tokens.verify(t, {TOKENS["kid"]: self.root})

    def test_attenuation_offline_matches_the_chain(self) -> None:
        first, *rest = TOKENS["valid"]
        for v in rest:
            t = tokens.decode_token(bytes.fromhex(first["hex"]))
            for c in v["caveats"]:
                t = tokens.attenuate(t, c["t"], c["v"])
            self.assertEqual(t.encode().hex(), v["hex"])

    def test_invalid_tokens(self) -> None:
        for v in TOKENS["invalid"]:
            with self.subTest(v["name"]):
                try:
                    t = tokens.decode_token(bytes.fromhex(v["hex"]))
                    tokens.verify(t, {TOKENS["kid"]: self.root})
                    code = "VALID"
                except TokenError as e:
                    self.assertEqual(e.error_class, "CAPABILITY")
                    code = e.code or ""
                self.assertEqual(code, v["error"]["code"])

    def test_inspect_narrows(self) -> None:
        v = TOKENS["valid"][-1]
        g = tokens.inspect(tokens.decode_token(bytes.fromhex(v["hex"])))
        self.assertTrue(tokens.allows(g, "storage.read", "obj://ws1/a"))
        self.assertFalse(tokens.allows(g, "storage.write", "obj://ws1/a"))

    def test_rights_caveat_keeps_pairs(self) -> None:
        v = next(v for v in TOKENS["valid"] if v["name"] == "root-token-with-rights-caveat")
        g = tokens.inspect(tokens.decode_token(bytes.fromhex(v["hex"])))
        self.assertTrue(tokens.allows(g, "storage.write", "obj://ws1/b/x"))
        self.assertFalse(tokens.allows(g, "storage.read", "obj://ws1/b/x"))
        self.assertFalse(tokens.allows(g, "storage.write", "obj://ws1/a/x"))


class AttestationVectors(unittest.TestCase):
    def test_valid(self) -> None:
        for v in ATTESTATION["valid"]:
            with self.subTest(v["name"]):
                t = attestation_transcript(bytes.fromhex(v["helloBody"]), bytes.fromhex(v["challengeBody"]))
                self.assertEqual(t.hex(), v["transcript"])
                ident = Identity("alice", bytes.fromhex(v["seed"]))
                self.assertEqual(ident.public_key.hex(), v["publicKey"])
                self.assertEqual(ident.sign(t).hex(), v["signature"])

    def test_invalid(self) -> None:
        for v in ATTESTATION["invalid"]:
            with self.subTest(v["name"]):
                t = attestation_transcript(bytes.fromhex(v["helloBody"]), bytes.fromhex(v["challengeBody"]))
                key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(v["publicKey"]))
                with self.assertRaises(InvalidSignature):
                    key.verify(bytes.fromhex(v["signature"]), t)


class AppendixA(unittest.TestCase):
    def test_handshake_transcript_and_signature(self) -> None:
        ident = Identity("alice", bytes(range(32)))
        self.assertEqual(ident.public_key.hex(), "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8")
        hello = encode_message(
            "HELLO",
            {
                "versions": [1],
                "persona": "alice",
                "publicKey": ident.public_key,
                "instance": bytes(range(0xA0, 0xB0)),
                "features": [],
                "client": "example/1.0",
            },
        )
        self.assertEqual(hello[:16].hex(), "4b50010100000000000000000000007d")
        challenge = encode_message(
            "CHALLENGE",
            {
                "version": 1,
                "session": "5e2f8a4c-1d3b-4c6e-9f70-2a1b3c4d5e6f",
                "nonce": b"\x42" * 32,
                "kernel": "kernel-example",
                "heartbeatMs": 5000,
                "limits": {"maxBody": 16777216, "maxInFlight": 1024, "dedupeWindowMs": 300000},
                "features": [],
            },
        )
        self.assertEqual(hashlib.sha256(hello[16:]).hexdigest(), "7b194e3bb87a5b774e8d5babf7fe395250d6c63c8e20196e2b69a834fdb31a4f")
        self.assertEqual(hashlib.sha256(challenge[16:]).hexdigest(), "2bcf507d43eeeace93ba31d0779af1b105e78f24bbe5921b988e1b606d2fbb21")
        transcript = attestation_transcript(hello[16:], challenge[16:])
        self.assertEqual(len(transcript), 79)
        sig = ident.sign(transcript)
        self.assertEqual(
            sig.hex(),
            "a31df63285fdbf96b6ee17ac9d2b9851494dd9783fff9ea176f0bd3fd9916df9"
            "a11d02d87151915f904ad3b89843091d50aa9aeedfea04faa0dfe8114b861107",
        )
        attest = encode_message("ATTEST", {"tokens": [], "signature": sig})
        self.assertTrue(attest.hex().startswith("4b500103000000000000000000000055a266746f6b656e7380"))
        self.assertEqual(encode_frame("GOODBYE", cbor.encode({})).hex(), "4b50010a000000000000000000000001a0")


if __name__ == "__main__":
    unittest.main()
