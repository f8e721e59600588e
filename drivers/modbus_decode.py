"""Register planning and decoding: pure functions from :class:`Field` lists to reads and values.

``plan_blocks`` coalesces the registers a map needs into as few reads as the device allows.
The registers of one poll land in one flat ``image`` (uint16) with a parallel ``ok`` mask, laid
out block after block; :class:`Decoder` precomputes, once per map, where every element of every
field sits in that image, so that decoding a poll is a fixed handful of numpy operations over all
elements at once (a 400-cell map costs about what a 16-cell map does).
"""

from __future__ import annotations

import math
import struct
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from bess_edge.drivers.register_map import Field, Function

from bess_edge.model import FloatArray, Quality

IntArray = npt.NDArray[np.int64]
U16Array = npt.NDArray[np.uint16]
BoolArray = npt.NDArray[np.bool_]

# SunSpec scale factors are defined for -10..10 (SunSpec Information Model Specification,
# "sunssf"); 0x8000 means "not implemented".
SF_LIMIT = 10
SF_NOT_IMPLEMENTED = -0x8000

# Maps up to this many elements also get a straight-line decoder (see _compile_clean): past it,
# numpy's fixed cost per call is repaid by the elements it handles at once.
STRAIGHT_LINE_MAX_ELEMENTS = 64


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: ``count`` registers from ``address``, stored at ``image[offset:]``."""

    function: Function
    address: int
    count: int
    offset: int

    def halves(self) -> tuple[Block, Block]:
        """Split for retrying around an illegal address: the image layout is unchanged."""
        first = self.count // 2
        return (
            Block(self.function, self.address, first, self.offset),
            Block(self.function, self.address + first, self.count - first, self.offset + first),
        )


def _spans(fields: tuple[Field, ...] | list[Field]) -> dict[Function, list[tuple[int, int]]]:
    """Register ranges [start, end) that must not be cut, per function."""
    spans: dict[Function, list[tuple[int, int]]] = defaultdict(list)
    for f in fields:
        width = 1 if f.type == "string" else f.width  # a long string may span reads
        for i in range(f.register_count // width):
            start = f.address + i * width
            spans[f.function].append((start, start + width))
        if f.scale_address is not None:
            spans[f.function].append((f.scale_address, f.scale_address + 1))
    return spans


def plan_blocks(
    fields: tuple[Field, ...] | list[Field], max_registers: int = 125, max_gap: int = 0
) -> list[Block]:
    """The fewest reads of at most ``max_registers`` covering every field's registers."""
    blocks: list[Block] = []
    offset = 0
    for function, spans in sorted(_spans(fields).items()):
        spans.sort()
        start, end = spans[0]
        for s, e in spans[1:]:
            if s <= end + max_gap and max(e, end) - start <= max_registers:
                end = max(end, e)
                continue
            blocks.append(Block(function, start, end - start, offset))
            offset += end - start
            start, end = s, e
        blocks.append(Block(function, start, end - start, offset))
        offset += end - start
    return blocks


def image_size(blocks: list[Block]) -> int:
    return sum(b.count for b in blocks)


def _locator(blocks: list[Block]) -> dict[tuple[str, int], int]:
    return {(b.function, b.address + i): b.offset + i for b in blocks for i in range(b.count)}


def decode_string(image: U16Array, ok: BoolArray, blocks: list[Block], f: Field) -> str | None:
    """An ASCII/UTF-8 string field, NUL- and space-trimmed; None when not readable or all NUL."""
    where = _locator(blocks)
    idx = [where[(f.function, f.address + i)] for i in range(f.count)]
    if not ok[idx].all():
        return None
    raw = image[idx].astype(">u2").tobytes()
    text = raw.rstrip(b"\x00").decode("utf-8", errors="replace").strip()
    return text or None


@dataclass(slots=True)
class Decoded:
    """Values of one poll in SI units (NaN where unusable) and the problems found.

    ``flat`` holds every element of every field in map order; ``slices`` says which are whose.
    """

    flat: FloatArray
    slices: list[tuple[Field, slice]]
    problems: list[tuple[Quality, str]] = field(default_factory=list)

    @property
    def values(self) -> dict[str, FloatArray]:
        """The values by field name (for SunSpec assembly and the probe)."""
        return {f.name: self.flat[s] for f, s in self.slices}


def _as_ratio(factor: float) -> tuple[float, float]:
    """``factor`` as (multiplier, divisor), dividing when it is 1/n so decimal scales stay exact."""
    if 0 < abs(factor) < 1:
        inverse = 1.0 / factor
        if abs(inverse - round(inverse)) < 1e-9 * abs(inverse):
            return (1.0, float(round(inverse))) if inverse > 0 else (-1.0, float(-round(inverse)))
    return factor, 1.0


class Decoder:
    """Decodes every polled field of a map from a poll's image, vectorised over all elements.

    Every element, whatever its type, is handled as a (high word, low word) pair, a 16-bit
    element having a high word of zero, so one poll costs the same ~20 numpy operations for any
    mix of types and any number of cells.
    """

    def __init__(self, fields: tuple[Field, ...] | list[Field], blocks: list[Block]) -> None:
        where = _locator(blocks)
        self.fields = tuple(fields)
        self.slices: list[tuple[Field, slice]] = []
        per: dict[str, list[float]] = defaultdict(list)
        pos = 0
        for f in self.fields:
            self.slices.append((f, slice(pos, pos + f.count)))
            sign = -1.0 if f.invert else 1.0
            bits = 16 * f.width
            mul, div = _as_ratio(f.scale * f.factor)
            for i in range(f.count):
                words = [where[(f.function, f.address + i * f.width + w)] for w in range(f.width)]
                if f.word_order == "little":
                    words.reverse()
                per["hi"].append(words[0] if f.width == 2 else words[-1])
                per["lo"].append(words[-1])
                per["wide"].append(f.width == 2)
                is_signed = f.type in ("s16", "s32")
                per["signed"].append(is_signed)
                per["f32"].append(f.type == "f32")
                per["mul"].append(mul * sign)
                per["div"].append(div)
                per["const"].append((f.offset * f.factor + f.si_offset) * sign)
                per["lo_limit"].append(f.valid_min)
                per["hi_limit"].append(f.valid_max)
                sf_at = f.scale_address
                per["sf"].append(-1 if sf_at is None else where[(f.function, sf_at)])
                if f.missing is None:
                    per["missing"].append(math.nan)  # equal to nothing
                else:
                    raw_missing = f.missing % (1 << bits)
                    if is_signed and raw_missing >= 1 << (bits - 1):
                        raw_missing -= 1 << bits
                    per["missing"].append(raw_missing)
                pos += 1
        self.size = pos
        self.hi = np.asarray(per["hi"], dtype=np.intp)
        self.lo = np.asarray(per["lo"], dtype=np.intp)
        wide = np.asarray(per["wide"], dtype=np.bool_)
        signed = np.asarray(per["signed"], dtype=np.bool_)
        # Elements are read from ``source``: the image as float64, then the image read as int16.
        # The (only or high) word of a signed element comes from the second half, so one linear
        # combination, value = source[top] * weight + source[low], decodes every integer type
        # exactly (float64 holds 32-bit integers exactly).
        registers = len(where)
        top = np.where(signed, self.hi + registers, self.hi)
        low = np.where(signed & ~wide, self.lo + registers, self.lo)
        weight = np.where(wide, 65536.0, 0.0)
        self.source_size = 2 * registers
        self.any_signed = bool(signed.any())
        # A map of a few dozen elements decodes with one matrix product (about 1 µs), a large one
        # with gathers (the matrix would grow with elements times registers).
        self.matrix: FloatArray | None = None
        if pos * self.source_size <= 1 << 14:
            self.matrix = np.zeros((pos, self.source_size))
            rows = np.arange(pos)
            self.matrix[rows, low] = 1.0
            np.add.at(self.matrix, (rows, top), weight)
        self.any_wide = bool(wide.any())
        self.top, self.low, self.weight = top, low, weight
        self.f32 = np.flatnonzero(per["f32"]) if pos else np.empty(0, np.intp)
        self.mul = np.asarray(per["mul"], dtype=np.float64)
        self.div = np.asarray(per["div"], dtype=np.float64)
        self.const = np.asarray(per["const"], dtype=np.float64)
        self.lo_limit = np.asarray(per["lo_limit"], dtype=np.float64)
        self.hi_limit = np.asarray(per["hi_limit"], dtype=np.float64)
        sf = np.asarray(per["sf"], dtype=np.intp)
        self.sf_at = np.flatnonzero(sf >= 0)
        self.sf_index = sf[self.sf_at]
        self.missing = np.asarray(per["missing"], dtype=np.float64)
        # Steps a map does not need are skipped: each numpy call costs 0.2-1 µs even on 16 values
        # (more in a real poll, with the caches cold after the I/O), most of a small map's decode.
        self.any_missing = bool(np.isfinite(self.missing).any())
        self.any_mul = bool((self.mul != 1.0).any())
        self.any_div = bool((self.div != 1.0).any())
        self.any_const = bool(self.const.any())
        self.clean: Callable[[bytes], list[float] | None] | None = None
        if 0 < pos <= STRAIGHT_LINE_MAX_ELEMENTS and not self.sf_at.size:
            self.clean = _compile_clean(per, registers)

    def raw(self, image: U16Array) -> FloatArray:
        """Every element's raw value: integers as the device meant them, f32 as their bits."""
        if self.any_signed:
            source = np.concatenate((image, image.view(np.int16)), dtype=np.float64)
        else:
            source = image.astype(np.float64)
        if self.matrix is not None:
            matrix = self.matrix if self.any_signed else self.matrix[:, : image.size]
            return matrix @ source  # type: ignore[no-any-return]
        if self.any_wide:
            value = source[self.top] * self.weight
            value += source[self.low]
            return value  # type: ignore[no-any-return]
        return source[self.low]  # type: ignore[no-any-return]

    def decode(self, image: U16Array, ok: BoolArray, all_read: bool | None = None) -> Decoded:
        """Values of one poll; ``all_read`` (every register arrived) spares a pass over ``ok``."""
        value = self.raw(image)
        not_available = value == self.missing if self.any_missing else None
        if self.f32.size:
            bits = value[self.f32].astype(np.uint32)
            with np.errstate(invalid="ignore"):  # a signalling-NaN pattern widened to float64
                value[self.f32] = bits.view(np.float32)
            nan = np.isnan(value)
            not_available = nan if not_available is None else not_available | nan
        bad_sf = None
        if not (self.any_mul or self.sf_at.size):
            si = value / self.div if self.any_div else value.copy()
        else:
            si = value * self.mul
            if self.sf_at.size:
                # SunSpec scale factors: value * 10^sf, dividing for sf < 0 so 8001 * 10^-1 = 800.1
                raw_sf = image[self.sf_index].view(np.int16).astype(np.float64)
                bad_sf = np.zeros(self.size, dtype=np.bool_)
                bad_sf[self.sf_at] = ~ok[self.sf_index] | (np.abs(raw_sf) > SF_LIMIT)
                raw_sf[bad_sf[self.sf_at]] = 0.0
                si[self.sf_at] *= np.power(10.0, np.maximum(raw_sf, 0.0))
                si[self.sf_at] /= np.power(10.0, np.maximum(-raw_sf, 0.0))
            if self.any_div:
                si /= self.div
        if self.any_const:
            si += self.const
        out_of_range = si < self.lo_limit
        out_of_range |= si > self.hi_limit
        bad = out_of_range if not_available is None else not_available | out_of_range
        if all_read is None:
            all_read = bool(ok.all())
        if not all_read:
            readable = ok[self.hi] & ok[self.lo]
            bad = bad | ~readable
        if bad_sf is not None:
            bad = bad | bad_sf
        problems: list[tuple[Quality, str]] = []
        if np.count_nonzero(bad):  # ndarray.any() costs twice as much on small arrays
            si[bad] = math.nan
            if all_read:
                readable = np.ones(self.size, dtype=np.bool_)
            if not_available is None:
                not_available = np.zeros(self.size, dtype=np.bool_)
            unread = ~readable
            not_available = not_available & readable
            checks: list[tuple[BoolArray, Quality, str, bool]] = [
                (unread, Quality.MISSING, "not readable", False),
                (not_available, Quality.MISSING, "reported as not available", True),
                (out_of_range & readable & ~not_available, Quality.OUT_OF_RANGE,
                 "outside the plausible range", False),
            ]  # fmt: skip
            if bad_sf is not None:
                sf_problem = bad_sf & readable & ~not_available
                checks.append(
                    (sf_problem, Quality.DECODE_ERROR, "has no usable scale factor", False)
                )
            for mask, quality, why, optional_ok in checks:
                if mask.any():
                    problems.extend(self._notes(mask, value, quality, why, optional_ok))
        return Decoded(si, self.slices, problems)

    def values_if_clean(self, wire: bytes) -> list[float] | None:
        """Every element's SI value from the registers as sent (big-endian), when every one is
        usable; None when any is not (missing, out of range) or the map has no straight-line
        decoder, so that :meth:`decode` works out what is wrong. Same values as :meth:`decode`.
        """
        return self.clean(wire) if self.clean is not None else None

    def _notes(
        self, mask: BoolArray, raw: FloatArray, quality: Quality, why: str, optional_ok: bool
    ) -> list[tuple[Quality, str]]:
        """One note per field with problems; optional fields may be "not available" silently."""
        notes = []
        for f, s in self.slices:
            hits = int(mask[s].sum())
            if not hits or (optional_ok and not f.flag_missing):
                continue
            what = f"{hits} of {f.count} elements" if f.count > 1 else "value"
            first = raw[s][mask[s]][0]
            notes.append((quality, f"{f.name} @ {f.address}: {what} {why} (raw {first:g})"))
        return notes


_F32 = struct.Struct(">f")


def _f32(bits: int) -> float:
    return float(_F32.unpack(bits.to_bytes(4, "big"))[0])


def _compile_clean(
    per: dict[str, list[float]], registers: int
) -> Callable[[bytes], list[float] | None]:
    """A Python function that decodes a clean poll of a small map in straight-line code.

    On a 16-cell map the vectorised decode and the Reading cost ~25 µs of CPU per poll in the
    poll loop (a dozen numpy calls at ~2 µs each: caches are cold after every round trip),
    against ~5 µs when each element is one Python expression over ``struct``-unpacked registers
    (benchmarks/modbus_bench.py). The function is generated from the per-element plan the numpy
    decoder uses (the way ``dataclasses`` generates ``__init__``) and applies the same
    operations in the same order, so its values are bit-identical; it returns None as soon as a
    value would be flagged, and the numpy path then reports what is wrong.
    """
    raws, values, missing, plausible = [], [], [], []
    for i in range(len(per["lo"])):
        hi, lo = int(per["hi"][i]), int(per["lo"][i])
        signed, f32 = per["signed"][i], per["f32"][i]
        if per["wide"][i]:  # the high word carries the sign, as in the numpy decoder
            raws.append(f"b{i} = {'q' if signed else 'r'}[{hi}] * 65536 + r[{lo}]")
        else:
            raws.append(f"b{i} = {'q' if signed else 'r'}[{lo}]")
        if not math.isnan(per["missing"][i]):
            missing.append(f"b{i} == {int(per['missing'][i])}")
        value = f"_f32(b{i})" if f32 else f"float(b{i})"
        mul, div, const = per["mul"][i], per["div"][i], per["const"][i]
        value += f" * {mul!r}" if mul != 1.0 else ""
        value += f" / {div!r}" if div != 1.0 else ""
        value += f" + {const!r}" if const != 0.0 else ""
        values.append(f"v{i} = {value}")
        low, high = per["lo_limit"][i], per["hi_limit"][i]
        if math.isfinite(low):
            plausible.append(f"{low!r} <= v{i}")  # False for NaN, as numpy's comparison
        if math.isfinite(high):
            plausible.append(f"v{i} <= {high!r}")
        if f32 and not (math.isfinite(low) or math.isfinite(high)):
            plausible.append(f"v{i} == v{i}")  # an f32 NaN is "not available"
    body = ["r = _unsigned(wire)", "q = _signed(wire)" if any(per["signed"]) else "", *raws]
    if missing:
        body += [f"if {' or '.join(missing)}:", "    return None"]
    body += values
    if plausible:
        body += [f"if not ({' and '.join(plausible)}):", "    return None"]
    body.append(f"return [{', '.join(f'v{i}' for i in range(len(values)))}]")
    source = "def clean(wire):\n" + "".join(f"    {line}\n" for line in body if line)
    namespace: dict[str, Any] = {
        "_unsigned": struct.Struct(f">{registers}H").unpack,
        "_signed": struct.Struct(f">{registers}h").unpack,
        "_f32": _f32,
    }
    exec(source, namespace)  # the source holds only numbers and names built here
    return namespace["clean"]  # type: ignore[no-any-return]
