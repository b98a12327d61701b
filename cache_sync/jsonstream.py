"""Big JSON documents read and written piece by piece: manifests, the state, the stat index.

A 200,000-file manifest is ~30 MB of JSON; ``json.loads`` turns it into ~150 MB of lists and
strings before the first ``Entry`` exists, and ``json.dumps`` of a whole document holds every
row as a list and the whole text at once. Here the text is decoded from a stream in pieces of
``CHUNK`` and the elements of the one big array (or the members of the one big object) are
handed to a callback one at a time, each parsed by the standard library's own scanner
(``JSONDecoder.raw_decode``), so what is accepted is exactly JSON. Writing yields the compact
text in pieces, which the caller compresses as they come.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import zstandard

CHUNK = 1 << 20
BATCH = 512  # rows encoded per piece of output
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_ENCODER = json.JSONEncoder(separators=(",", ":"))
STREAMED = object()  # the value ``read_object`` reports for an array it streamed


class TooBig(ValueError):
    """The decompressed text is longer than the reader's limit."""


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Text:
    """A window on the decoded text of ``stream``, refilled as parsing goes."""

    def __init__(self, stream: Readable, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.total = 0
        self.want = CHUNK

    def more(self) -> bool:
        """Append the next piece of text (keeping what is not consumed); False at the end."""
        if self.eof:
            return False
        piece = self.stream.read(self.want)
        self.total += len(piece)
        if self.total > self.limit:
            raise TooBig(f"more than {self.limit} bytes")
        self.eof = not piece
        self.buf = self.buf[self.pos:] + self.utf8.decode(piece, final=self.eof)
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next character that is not whitespace ('' at the end), not consumed."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def take(self, allowed: str) -> str:
        c = self.peek()
        if not c or c not in allowed:
            raise ValueError(f"expected one of {allowed!r} at character {self.total}")
        self.pos += 1
        return c

    def value(self) -> Any:
        """The next JSON value. A value that runs to the end of the window is parsed again
        with more text (a number may go on); a window too short for one value doubles."""
        self.peek()
        while True:
            try:
                v, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self.eof:
                    raise
                self.want = min(self.want * 2, 64 * CHUNK)
                self.more()
                continue
            if end < len(self.buf) or self.eof:
                self.pos = end
                self.want = CHUNK
                return v
            self.more()


def read_object(stream: Readable, *, limit: int,
                arrays: Mapping[str, Callable[[Any], None]] | None = None,
                each: Callable[[str, Any], None] | None = None,
                into: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse a JSON object from ``stream`` (bytes of UTF-8 text). For a member named in
    ``arrays`` whose value is an array, each element goes to its callback as it is parsed
    and the member's value is reported as ``STREAMED``; with ``each``, every member goes to
    it instead of the result (a repeated name too, as ``json.loads`` keeps the last). Raises
    ValueError (JSONDecodeError, TooBig, UnicodeError) on anything that is not one JSON
    object, and on a repeated member name otherwise. ``into``: the dict
    to fill (the caller sees the members parsed so far from its callbacks)."""
    arrays = arrays or {}
    t = _Text(stream, limit)
    out: dict[str, Any] = {} if into is None else into
    t.take("{")
    if t.peek() == "}":
        t.pos += 1
    else:
        while True:
            if t.peek() != '"':
                raise ValueError(f"expected a member name at character {t.total}")
            key = t.value()
            t.take(":")
            if each is not None:
                each(key, t.value())
                if t.take(",}") == "}":
                    break
                continue
            if key in out:
                raise ValueError(f"duplicate member {key[:40]!r}")
            sink = arrays.get(key)
            if sink is not None and t.peek() == "[":
                t.pos += 1
                if t.peek() == "]":
                    t.pos += 1
                else:
                    while True:
                        sink(t.value())
                        if t.take(",]") == "]":
                            break
                out[key] = STREAMED
            else:
                out[key] = t.value()
            if t.take(",}") == "}":
                break
    if t.peek() != "":
        raise ValueError("data after the JSON object")
    return out


def object_text(head: Mapping[str, Any], key: str, rows: Iterable[Any]) -> Iterator[str]:
    """The compact JSON text of ``{**head, key: list(rows)}``, in pieces (the same text
    ``json.dumps(..., separators=(",", ":"))`` gives), never holding the whole list."""
    start = _ENCODER.encode(dict(head))
    yield (start[:-1] + "," if head else "{") + _ENCODER.encode(key) + ":["
    yield from _joined(_ENCODER.encode(r) for r in rows)
    yield "]}"


def members_text(members: Iterable[tuple[str, Any]]) -> Iterator[str]:
    """The compact JSON text of ``dict(members)``, in pieces."""
    yield "{"
    yield from _joined(_ENCODER.encode(k) + ":" + _ENCODER.encode(v) for k, v in members)
    yield "}"


def _joined(parts: Iterable[str]) -> Iterator[str]:
    batch: list[str] = []
    first = True
    for p in parts:
        batch.append(p)
        if len(batch) == BATCH:
            yield ("" if first else ",") + ",".join(batch)
            first = False
            batch = []
    if batch:
        yield ("" if first else ",") + ",".join(batch)


def compress(pieces: Iterable[str], level: int = 3) -> bytes:
    """One zstd frame of the UTF-8 text of ``pieces`` (compressed as they come)."""
    cobj = zstandard.ZstdCompressor(level=level).compressobj()
    out = [cobj.compress(p.encode()) for p in pieces]
    out.append(cobj.flush())
    return b"".join(out)


def decompressed(data: bytes) -> Readable:
    """A reader of the decompressed bytes of ``data`` (one or more zstd frames)."""
    return zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
