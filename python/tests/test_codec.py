"""CBOR error codes the vectors do not pin yet (§5.5), and encoder refusals."""

from __future__ import annotations

import os
import stat
import tempfile
import threading
import unittest

from kpip import cbor
from kpip.errors import CborError, FrameError, IdentityError, IntentError, MessageError
from kpip.frames import Frame, FrameDecoder, encode_frame
from kpip.identity import Identity
from kpip.intent import encode_intent
from kpip.messages import validate


class Decode(unittest.TestCase):
    def code(self, hexs: str, limits: cbor.Limits = cbor.DEFAULT_LIMITS) -> str:
        with self.assertRaises(CborError) as cm:
            cbor.decode(bytes.fromhex(hexs), limits)
        return cm.exception.code or ""

    def test_codes(self) -> None:
        cases = {
            "1c": "MALFORMED",  # AI 28
            "ff": "MALFORMED",  # lone break
            "": "TRUNCATED",
            "a1695f5f70726f746f5f5f01": "BAD_KEY",
            "a1f93c0001": "BAD_KEY",  # a float map key: the key check comes first
            "d80100": "NON_CANONICAL",  # §5.5: shortest form before the tag check
            "f820": "UNSUPPORTED_TYPE",
            "62c0af": "INVALID_UTF8",  # overlong '/'
            "63eda080": "INVALID_UTF8",  # a surrogate
            "5f": "INDEFINITE_LENGTH",
            "a261620161610f": "UNSORTED_KEYS",
        }
        for hexs, want in cases.items():
            with self.subTest(hexs):
                self.assertEqual(self.code(hexs), want)

    def test_too_many_items(self) -> None:
        self.assertEqual(self.code("83010203", cbor.Limits(max_items=3)), "TOO_MANY_ITEMS")
        self.assertEqual(cbor.decode(bytes.fromhex("83010203"), cbor.Limits(max_items=4)), [1, 2, 3])

    def test_depth_limit_is_32_containers(self) -> None:
        v = cbor.decode(bytes.fromhex("81" * 32 + "00"))
        for _ in range(32):
            assert isinstance(v, list)
            v = v[0]
        self.assertEqual(v, 0)
        self.assertEqual(self.code("81" * 33 + "00"), "TOO_DEEP")

    def test_integer_range(self) -> None:
        for n in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -1, -(2**64)):
            self.assertEqual(cbor.decode(cbor.encode(n)), n)
        with self.assertRaises(CborError):
            cbor.encode(2**64)


class Encode(unittest.TestCase):
    def test_refuses_floats_non_text_keys_and_proto(self) -> None:
        for v in (1.5, {1: 2}, {"__proto__": 1}, {"a": object()}):
            with self.subTest(repr(v)):
                with self.assertRaises(CborError):
                    cbor.encode(v)  # type: ignore[arg-type]

    def test_never_encodes_what_the_decoder_refuses_as_too_deep_an_empty_container_at_depth_32_included(self) -> None:
        for inner in ([], {}, [0], {"a": 0}):
            v: object = inner
            for _ in range(32):
                v = [v]
            with self.subTest(inner=inner), self.assertRaises(CborError) as cm:
                cbor.encode(v)  # type: ignore[arg-type]
            self.assertEqual(cm.exception.code, "TOO_DEEP")
        ok: object = 0
        for _ in range(32):
            ok = {"k": ok}
        self.assertEqual(cbor.decode(cbor.encode(ok)), ok)  # type: ignore[arg-type]
        # An intent's args sit at depth 1: 31 more containers inside them, an empty one, is one too many.
        deep: object = []
        for _ in range(30):
            deep = [deep]
        with self.assertRaises(IntentError) as intent:
            encode_intent({"op": "storage.write", "target": "obj://ws/x", "args": {"a": deep}})
        self.assertEqual(intent.exception.code, "TOO_DEEP")

    def test_bool_is_not_an_integer(self) -> None:
        self.assertEqual(cbor.encode([True, False, None, 1]).hex(), "84f5f4f601")


class ContextLabels(unittest.TestCase):
    def test_control_and_bidi_characters_are_refused_in_context_text_and_hello_client(self) -> None:
        def request(**ctx: str) -> dict[str, object]:
            return {"version": 1, "persona": "alice", "id": 1, "intent": b"\xa0", "context": {"persona": "alice", **ctx}, "caps": [1]}

        for text in (
            "run\nstatus SUCCESS",
            "\x1b[8m",
            "a\u202eb",
            "a\x85b",
            "a\x7fb",
            # Drawn as nothing or as a line break: zero-width space, line separator, a tag character, soft hyphen, BOM.
            "ops\u200bteam",
            "run\u2028status SUCCESS",
            "lab\U000e0041",
            "pro\u00adduction",
            "\ufefflab",
        ):
            for field in ("execution", "domain", "traceparent"):
                with self.subTest(field=field, text=text), self.assertRaises(MessageError):
                    validate("REQUEST", request(**{field: text}))
        validate("REQUEST", request(execution="run-42 実行", domain="lab"))


class IdentityFile(unittest.TestCase):
    def test_round_trip_and_refusals(self) -> None:
        ident = Identity.generate("alice/worker-1")
        self.assertEqual(Identity.parse(ident.to_json()), ident)
        for bad in ("nope", "{}", '{"kpip": "identity/v1", "persona": "Alice", "privateKey": ""}'):
            with self.subTest(bad), self.assertRaises(IdentityError):
                Identity.parse(bad)

    def test_save_writes_a_new_0600_file_never_over_a_file_or_through_a_link(self) -> None:
        ident = Identity.generate("alice")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "alice.identity")
            ident.save(path)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            with open(path) as f:
                self.assertEqual(Identity.parse(f.read()), ident)
            # An existing file (here 0644) is not written over: it would keep its mode.
            other = os.path.join(d, "existing")
            with open(other, "w") as f:
                f.write("old")
            os.chmod(other, 0o644)
            with self.assertRaises(IdentityError):
                ident.save(other)
            with open(other) as f:
                self.assertEqual(f.read(), "old")
            # A link is not followed: the key never lands where it points.
            target = os.path.join(d, "target")
            link = os.path.join(d, "link.identity")
            os.symlink(target, link)
            with self.assertRaises(IdentityError):
                ident.save(link)
            self.assertFalse(os.path.exists(target))

    def test_load_reads_only_a_regular_file_of_a_bounded_size_a_fifo_dev_zero_or_a_huge_file_is_refused_at_once(self) -> None:
        ident = Identity.generate("alice")
        with tempfile.TemporaryDirectory() as d:
            good = os.path.join(d, "alice.identity")
            ident.save(good)
            self.assertEqual(Identity.load(good), ident)
            fifo = os.path.join(d, "fifo.identity")
            os.mkfifo(fifo)
            zero = os.path.join(d, "zero.identity")
            os.symlink("/dev/zero", zero)
            huge = os.path.join(d, "huge.identity")
            with open(huge, "wb") as f:
                f.truncate(1 << 30)
            for path in (fifo, zero, huge, d):
                # In a thread: a read that waits for a writer, or never ends, must fail the test, not hang it.
                outcome: list[BaseException | None] = []

                def load(p: str = path) -> None:
                    try:
                        Identity.load(p)
                        outcome.append(None)
                    except BaseException as e:  # handed to the test thread
                        outcome.append(e)

                t = threading.Thread(target=load, daemon=True)
                t.start()
                t.join(60)
                with self.subTest(path):
                    self.assertFalse(t.is_alive(), f"Identity.load({path}) still reading after 60 s")
                    self.assertIsInstance(outcome[0], IdentityError)


if __name__ == "__main__":
    unittest.main()


class FrameDecoderLimit(unittest.TestCase):
    def test_each_frame_is_checked_against_the_limit_in_force_when_it_is_taken(self) -> None:
        # One read: a small frame, then one past the first limit; the limit is raised between them.
        small, big = encode_frame("PING", b"\xa0"), encode_frame("PING", b"x" * 5000)
        d = FrameDecoder(max_body=1000)
        d.feed(small + big)
        self.assertEqual(d.next(), Frame("PING", 0, 0, b"\xa0"))
        d.max_body = 8000
        self.assertEqual(d.next(), Frame("PING", 0, 0, b"x" * 5000))
        self.assertIsNone(d.next())
        # Not raised: the big frame is past the limit, refused at its header.
        d = FrameDecoder(max_body=1000)
        d.feed(small + big)
        self.assertIsNotNone(d.next())
        with self.assertRaises(FrameError) as cm:
            d.next()
        self.assertEqual(cm.exception.code, "TOO_LARGE")
        self.assertIsNone(d.next(), "nothing after an error")
