"""Reads with a byte budget: the bound, its error, and MATLAB v5 files decompressed within it.

Used by `archives` (archive members, .mat files; docs/threat_model.md): a `Budget` is charged
as bytes come out of a decompressor, and `inflate_mat` decompresses a .mat file's compressed
variables itself, counting the cells and struct fields its arrays declare (scipy allocates
those before reading them), so that scipy then reads a copy with nothing left to expand.
"""
import math
import struct
import zlib

CHUNK = 1 << 20  # bytes decompressed per step
MAX_MAT_NESTING = 32  # cells / structs inside cells / structs


class TooLarge(Exception):
    """A bound of this module was reached while reading; the message says which."""


class Budget:
    """Bytes one read may still produce: `limit`, named `what` in the message."""

    def __init__(self, limit, what):
        self.limit, self.what, self.used = limit, what, 0

    def charge(self, nbytes):
        self.used += nbytes
        if self.used > self.limit:
            raise TooLarge(f"{self.what} expands past {self.limit:,} bytes (a decompression "
                            "bomb?)")


_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED = 1, 5, 6, 14, 15
_MX_CELL, _MX_STRUCT, _MX_OBJECT = 1, 2, 3


def _elements(buf, start, end, endian):
    """(type, data start, data length) of the data elements in buf[start:end] (MAT v5 tags,
    the small 4-byte form included; each normal element padded to 8 bytes)."""
    pos = start
    while pos + 8 <= end:
        first, second = struct.unpack_from(endian + "II", buf, pos)
        if first >> 16:  # small element: type and size in the first word, data in the second
            yield first & 0xFFFF, pos + 4, first >> 16
            pos += 8
            continue
        if pos + 8 + second > end:
            raise ValueError(f"a data element of {second:,} bytes reaches past its container")
        yield first, pos + 8, second
        pos += 8 + second + (-second % 8)


def _check_matrix(buf, start, end, endian, depth, budget):
    """Walk a miMATRIX element (its data in buf[start:end]): charge `budget` for the cells or
    struct fields it declares (scipy allocates them before reading them) and check nesting."""
    if depth > MAX_MAT_NESTING:
        raise TooLarge(f"arrays nested more than {MAX_MAT_NESTING} deep")
    parts = list(_elements(buf, start, end, endian))
    if len(parts) < 2 or parts[0][0] != _MI_UINT32 or parts[1][0] != _MI_INT32:
        return  # not an array header scipy would accept: scipy refuses it itself
    flags_at, dims_at, dims_len = parts[0][1], parts[1][1], parts[1][2]
    array_class = struct.unpack_from(endian + "I", buf, flags_at)[0] & 0xFF
    dims = struct.unpack_from(f"{endian}{dims_len // 4}i", buf, dims_at)
    if any(d < 0 for d in dims):
        raise ValueError(f"an array declares negative dimensions {dims}")
    count = math.prod(dims)
    if array_class == _MX_CELL:
        budget.charge(8 * count)
    elif array_class in (_MX_STRUCT, _MX_OBJECT):
        names = [p for p in parts[2:] if p[0] == _MI_INT8]
        lengths = [p for p in parts[2:] if p[0] == _MI_INT32]
        field_len = struct.unpack_from(endian + "i", buf, lengths[0][1])[0] if lengths else 1
        fields = names[-1][2] // max(field_len, 1) if len(names) >= 2 else 1
        budget.charge(8 * count * max(fields, 1))
    else:
        return  # numbers, characters, sparse: their data is in the file, already counted
    for kind, at, length in parts[2:]:
        if kind == _MI_MATRIX:
            _check_matrix(buf, at, at + length, endian, depth + 1, budget)


def inflate_mat(data, budget):
    """A MATLAB v5 file's bytes with each compressed variable decompressed (an equivalent file
    scipy reads without decompressing anything), within `budget`; other files unchanged."""
    if len(data) < 128 or data[126:128] not in (b"IM", b"MI"):
        return data  # v4 (nothing compressed) or not a v5 file: scipy tells
    endian = "<" if data[126:128] == b"IM" else ">"
    out = bytearray(data[:128])
    budget.charge(len(data))
    for kind, at, length in _elements(data, 128, len(data), endian):
        if kind == _MI_COMPRESSED:
            element = _inflate(data[at:at + length], budget)
        else:
            element = data[at - 8:at + length]
        for inner, inner_at, inner_length in _elements(element, 0, len(element), endian):
            if inner == _MI_MATRIX:
                _check_matrix(element, inner_at, inner_at + inner_length, endian, 1, budget)
        out += element
    return bytes(out)


def _inflate(compressed, budget):
    """zlib-decompress one compressed variable, charging `budget` as the bytes come."""
    dec, out, pending = zlib.decompressobj(), bytearray(), compressed
    while not dec.eof:
        piece = dec.decompress(pending, CHUNK)
        budget.charge(len(piece))
        out += piece
        pending = dec.unconsumed_tail
        if not piece and not pending:
            break
    if not dec.eof:
        raise ValueError("a compressed variable is truncated")
    return bytes(out)
