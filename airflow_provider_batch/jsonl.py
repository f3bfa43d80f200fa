"""Lines of a JSONL stream, read in large blocks: the one line reader the request validator and the
results parser share.

Splitting a 1 MiB block with ``bytes.split`` runs in C; a Python-level ``readline`` per line on an fsspec
file (and through Airflow's lineage wrapper) costs several times more. A line that spans blocks is joined
from its pieces once, so a very long line (a base64 image) is not copied once per block, and memory stays
about two blocks plus the longest line, whatever the size of the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

BLOCK_SIZE = 1 << 20
"""Bytes per read or copy: large enough that per-call overhead (fsspec, and Airflow's lineage hook on
every ``read`` of an ``ObjectStoragePath`` file) disappears, small enough to keep memory flat."""


class JsonlLines:
    """Iterate ``(line number, byte offset, line)`` over a binary stream, each line without its ``\\n``.

    Line numbers count every line, blank ones too, so they match what an editor shows.

    :param stream: read from its current position; not closed.
    :param skip_blank: leave out empty and whitespace-only lines.
    """

    def __init__(self, stream: IO[bytes], *, skip_blank: bool = True) -> None:
        self._stream = stream
        self._skip_blank = skip_blank
        self.bytes_read = 0
        """Bytes read from the stream so far (all of it, once iteration has ended)."""

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        number = offset = 0
        pending: list[bytes] = []
        while block := self._stream.read(BLOCK_SIZE):
            self.bytes_read += len(block)
            pieces = block.split(b"\n")
            if len(pieces) == 1:
                pending.append(block)
                continue
            if pending:
                pending.append(pieces[0])
                pieces[0] = b"".join(pending)
                pending = []
            tail = pieces.pop()
            for piece in pieces:
                number += 1
                if not self._skip_blank or (piece and not piece.isspace()):
                    yield number, offset, piece
                offset += len(piece) + 1
            if tail:
                pending.append(tail)
        last = b"".join(pending)
        if last and not last.isspace():
            yield number + 1, offset, last
