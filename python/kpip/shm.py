"""Shared memory for large bodies (§3.7), with the standard library only.

Each side writes large bodies into its own POSIX shared-memory segment — on Linux a file in
/dev/shm — and sends a descriptor frame instead. No segment is ever mapped: this client's own
is written with ``pwrite`` and its control word read with ``pread`` through its file, and its
pages are reserved when it is created (``posix_fallocate``), so a full /dev/shm shows up there,
where the body simply goes inline. The kernel's segment is read with ``pread`` through its file.
Either segment shrunk under us (``ftruncate`` by the kernel-side peer, or any process of the
user) is a short read — ``SHM_OUT_OF_BOUNDS``, or an own segment that takes no more bodies —
never a fault: through a mapping the next access raised SIGBUS and killed the process. Nothing the kernel
says about its segment is trusted: every check of §3.7 is made, the copy is the bounds check,
and the CRC-32 is checked over the copy.
"""

from __future__ import annotations

import atexit
import os
import re
import stat
import struct
import threading
import zlib
from typing import Any

from . import cbor
from .errors import CborError, KpipError
from .frames import FLAG_SHM, HEADER_SIZE, Frame

SHM_FEATURE = "shm"
CONTROL_BYTES = 64  # bytes 0–3: the last sequence number the receiver consumed
DEFAULT_THRESHOLD = 64 * 1024  # bodies above this go through the segment
FILE_HEADER = 8  # the segment's size as a little-endian uint64 (shm-typed-array's layout)
SHM_DIR = "/dev/shm"
GRACE_SECONDS = 2.0  # an untaken last body outlives the session this long (§3.7)

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct(">2sBBB3sII")
_DESCRIPTOR_LIMITS = cbor.Limits(max_depth=2, max_items=16)
_KEYS = frozenset({"off", "len", "seg", "seq", "crc"})

# Own segments still on disk, removed at interpreter exit if a client was never closed.
_live: set[str] = set()
atexit.register(lambda: [_unlink(p) for p in list(_live)])


class ShmError(KpipError):
    """A descriptor that does not name a valid region of the kernel's segment: PROTOCOL, fatal."""

    def __init__(self, code: str, message: str):
        super().__init__("PROTOCOL", message, code)


def unavailable(directory: str = SHM_DIR) -> str | None:
    """Why this process cannot offer "shm" (None when it can)."""
    if os.environ.get("KPIP_SHM") == "off":
        return "disabled by KPIP_SHM=off"
    try:
        if not stat.S_ISDIR(os.stat(directory).st_mode):
            return f"{directory} is not a directory"
    except OSError as e:
        return f"no POSIX shared-memory directory {directory} ({e.strerror})"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory} is not writable"
    return None


def segment_name(kernel: str, session: str, side: str) -> str:
    """``/kpip.<kernel>.<session>.<k|p>`` (k: kernel → persona), other characters (``/`` too) as ``_``."""
    return "/" + re.sub(r"[^A-Za-z0-9._-]", "_", f"kpip.{kernel}.{session}.{side}")


def decode_descriptor(body: bytes) -> dict[str, Any]:
    """The descriptor map {off, len, seg, seq, crc}; SHM_BAD_DESCRIPTOR for anything else."""
    try:
        d = cbor.decode(body, _DESCRIPTOR_LIMITS)
    except CborError as e:
        raise ShmError("SHM_BAD_DESCRIPTOR", f"shared-memory descriptor is not canonical CBOR: {e.message}") from None

    def uint(v: Any, hi: int) -> bool:
        return type(v) is int and 0 <= v <= hi

    if not (
        isinstance(d, dict)
        and d.keys() == _KEYS
        and isinstance(d["seg"], str)
        and len(d["seg"]) <= 255
        and uint(d["off"], 1 << 40)
        and uint(d["len"], 1 << 40)
        and uint(d["seq"], 0xFFFFFFFF)
        and uint(d["crc"], 0xFFFFFFFF)
    ):
        raise ShmError("SHM_BAD_DESCRIPTOR", "shared-memory descriptor must be {seg, off, len, seq, crc}")
    return d


def _unlink(path: str) -> None:
    _live.discard(path)
    try:
        os.unlink(path)
    except OSError:
        pass  # gone already


class ShmChannel:
    """One session's shared-memory channel, from the persona's side.

    The own segment is created at the first large body (sessions that never send bulk never
    pay for it); one body is outstanding at a time: while the kernel has not consumed the last
    one, the next large frame goes inline. ``sent``/``received`` count frames that went
    through shared memory."""

    def __init__(self, own: str, peer: str, max_body: int, threshold: int = DEFAULT_THRESHOLD, directory: str = SHM_DIR):
        self.own_name = own
        self.peer_name = peer
        self.max_body = max_body
        self.threshold = threshold
        self.dir = directory
        self.sent = 0
        self.received = 0
        self._seq = 0
        self._peer_seq = 0
        self._own_fd: int | None = None
        self._own_failed = False
        self._peer_fd: int | None = None
        self.closed = False

    def path(self, name: str) -> str | None:
        """The file of a segment name; None for a name that is not a single file name."""
        base = name[1:] if name.startswith("/") else name
        return None if "/" in base or base in ("", ".", "..") else os.path.join(self.dir, base)

    # ---- sending ------------------------------------------------------------------

    def wrap(self, frame: bytes) -> bytes:
        """The frame to write: a descriptor frame once its body is in the segment, or the frame."""
        n = len(frame) - HEADER_SIZE
        if n <= self.threshold or n > self.max_body or self.closed:
            return frame
        fd = self._own()
        if fd is None or self._control(fd) != self._seq:
            return frame  # no segment, or the kernel has not taken the previous body yet
        body = memoryview(frame)[HEADER_SIZE:]
        try:
            _pwrite(fd, body, FILE_HEADER + CONTROL_BYTES)
        except OSError:
            return frame  # the segment was shrunk and /dev/shm is full: inline
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        desc = cbor.encode({"off": CONTROL_BYTES, "len": n, "seg": self.own_name, "seq": self._seq, "crc": zlib.crc32(body)})
        magic, version, type_code, flags, reserved, stream, _ = _HEADER.unpack_from(frame)
        self.sent += 1
        return _HEADER.pack(magic, version, type_code, flags | FLAG_SHM, reserved, stream, len(desc)) + desc

    @staticmethod
    def _control(fd: int) -> int:
        """The control word of our segment: the last sequence number the kernel consumed (-1 if
        the segment was shrunk below it: no body goes through it again)."""
        word = _pread(fd, 4, FILE_HEADER)
        return int(_U32.unpack(word)[0]) if len(word) == 4 else -1

    def _own(self) -> int | None:
        if self._own_fd is not None or self._own_failed:
            return self._own_fd
        self._own_failed = True  # one try per session: a failure means inline from now on
        path = self.path(self.own_name)
        if path is None:
            return None
        size = FILE_HEADER + CONTROL_BYTES + self.max_body
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        _live.add(path)
        try:
            os.ftruncate(fd, size)
            os.posix_fallocate(fd, 0, size)  # no room in /dev/shm: found here, not at a body
            os.pwrite(fd, _U64.pack(size - FILE_HEADER), 0)
        except OSError:
            os.close(fd)
            _unlink(path)
            return None
        self._own_fd = fd
        self._own_failed = False
        return fd

    # ---- receiving ----------------------------------------------------------------

    def unwrap(self, f: Frame) -> Frame:
        """The frame with its body copied out of the kernel's segment; ShmError if it is bad."""
        if not f.flags & FLAG_SHM:
            return f
        d = decode_descriptor(f.body)
        if d["seg"] != self.peer_name:
            raise ShmError("SHM_FOREIGN_SEGMENT", "the descriptor names a segment that is not this session's kernel segment")
        fd = self._peer()
        if d["len"] > self.max_body:
            raise ShmError("SHM_TOO_LARGE", f"descriptor length {d['len']} exceeds the maximum body {self.max_body}")
        if d["off"] < CONTROL_BYTES:
            raise ShmError("SHM_OUT_OF_BOUNDS", "the descriptor points into the control bytes")
        if d["seq"] != (self._peer_seq + 1) & 0xFFFFFFFF:
            raise ShmError("SHM_BAD_SEQUENCE", f"descriptor sequence {d['seq']} does not follow {self._peer_seq}")
        # Copy first, then check the copy: the kernel's segment can change (or shrink) meanwhile.
        body = _pread(fd, d["len"], FILE_HEADER + d["off"])
        if len(body) != d["len"]:
            raise ShmError("SHM_OUT_OF_BOUNDS", "the descriptor points outside its segment")
        if zlib.crc32(body) != d["crc"]:
            raise ShmError("SHM_BAD_CHECKSUM", "the shared-memory body does not match its CRC-32")
        self._peer_seq = d["seq"]
        os.pwrite(fd, _U32.pack(d["seq"]), FILE_HEADER)  # frees the kernel's region
        self.received += 1
        return Frame(f.type, f.stream, f.flags & ~FLAG_SHM, body)

    def _peer(self) -> int:
        if self._peer_fd is not None:
            return self._peer_fd
        path = self.path(self.peer_name)
        fd = -1
        try:
            if path is None or self.closed:
                raise FileNotFoundError
            # O_NOFOLLOW: never through a link; O_NONBLOCK: a FIFO under the name cannot block us.
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                raise FileNotFoundError
        except OSError:
            if fd >= 0:
                os.close(fd)
            raise ShmError("SHM_NO_SEGMENT", "the descriptor names a segment that does not exist") from None
        self._peer_fd = fd
        return fd

    # ---- closing ------------------------------------------------------------------

    def close(self, grace: float = GRACE_SECONDS) -> None:
        """Removes our segment and lets go of the kernel's (the session ended). A body the kernel
        has not taken yet keeps the segment for `grace` seconds (and no longer than this process)."""
        self.closed = True
        taken = True
        if self._own_fd is not None:
            taken = self._control(self._own_fd) == self._seq
            os.close(self._own_fd)
            self._own_fd = None
        path = self.path(self.own_name)
        if path is not None and path in _live:
            if taken:
                _unlink(path)
            else:
                timer = threading.Timer(grace, _unlink, (path,))
                timer.daemon = True  # the atexit hook removes it if the process ends first
                timer.start()
        if self._peer_fd is not None:
            os.close(self._peer_fd)
            self._peer_fd = None


def _pwrite(fd: int, data: memoryview, off: int) -> None:
    """All of data at off (a write past the file's end grows it again)."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], off + done)


def _pread(fd: int, n: int, off: int) -> bytes:
    """Up to n bytes at off: fewer where the file ends now."""
    first = os.pread(fd, n, off)
    if len(first) == n or not first:
        return first
    parts = [first]
    got = len(first)
    while got < n:
        more = os.pread(fd, n - got, off + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


__all__ = [
    "CONTROL_BYTES",
    "DEFAULT_THRESHOLD",
    "SHM_FEATURE",
    "ShmChannel",
    "ShmError",
    "decode_descriptor",
    "segment_name",
    "unavailable",
]
