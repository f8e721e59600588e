"""Register planning and decoding: pure functions from :class:`Field` lists to reads and values.

``plan_blocks`` coalesces the registers a map needs into as few reads as the device allows.
The registers of one poll land in one flat ``image`` (uint16) with a parallel ``ok`` mask, laid
out block after block; :class:`Decoder` precomputes, once per map, where every element of every
field sits in that image, so that decoding a poll is a fixed handful of numpy operations over all
elements at once (a 400-cell map costs about what a 16-cell map does).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

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
    """Values of one poll in SI units (NaN where unusable) and the problems found."""

    values: dict[str, FloatArray]
    problems: list[tuple[Quality, str]] = field(default_factory=list)


def _as_ratio(factor: float) -> tuple[float, float]:
    """``factor`` as (multiplier, divisor), dividing when it is 1/n so decimal scales stay exact."""
    if 0 < abs(factor) < 1:
        inverse = 1.0 / factor
        if abs(inverse - round(inverse)) < 1e-9 * abs(inverse):
            return (1.0, float(round(inverse))) if inverse > 0 else (-1.0, float(-round(inverse)))
    return factor, 1.0


class Decoder:
    """Decodes every polled field of a map from a poll's image, vectorised over all elements."""

    def __init__(self, fields: tuple[Field, ...] | list[Field], blocks: list[Block]) -> None:
        where = _locator(blocks)
        self.fields = tuple(fields)
        self.slices: list[tuple[Field, slice]] = []
        # Element index matrices per register type, high word first, and their positions.
        groups: dict[str, tuple[list[list[int]], list[int]]] = defaultdict(lambda: ([], []))
        per_element: dict[str, list[float]] = defaultdict(list)
        sf_index: list[int] = []
        missing: list[int] = []
        pos = 0
        for f in self.fields:
            self.slices.append((f, slice(pos, pos + f.count)))
            sign = -1.0 if f.invert else 1.0
            for i in range(f.count):
                words = [where[(f.function, f.address + i * f.width + w)] for w in range(f.width)]
                if f.word_order == "little":
                    words.reverse()
                idx, positions = groups[f.type]
                idx.append(words)
                positions.append(pos)
                mul, div = _as_ratio(f.scale * f.factor)
                per_element["mul"].append(mul * sign)
                per_element["div"].append(div)
                per_element["const"].append((f.offset * f.factor + f.si_offset) * sign)
                per_element["lo"].append(f.valid_min)
                per_element["hi"].append(f.valid_max)
                sf_index.append(
                    -1 if f.scale_address is None else where[(f.function, f.scale_address)]
                )
                missing.append(-1 if f.missing is None else f.missing % (1 << (16 * f.width)))
                pos += 1
        self.size = pos
        self.groups = {
            t: (np.asarray(idx, dtype=np.intp), np.asarray(p, dtype=np.intp))
            for t, (idx, p) in groups.items()
        }
        self.per = {k: np.asarray(v, dtype=np.float64) for k, v in per_element.items()}
        self.sf_index = np.asarray(sf_index, dtype=np.intp)
        self.has_sf = self.sf_index >= 0
        self.missing = np.asarray(missing, dtype=np.int64)
        self.has_missing = self.missing >= 0

    def decode(self, image: U16Array, ok: BoolArray) -> Decoded:
        value = np.empty(self.size, dtype=np.float64)
        unsigned = np.empty(self.size, dtype=np.int64)
        readable = np.empty(self.size, dtype=np.bool_)
        for type_, (idx, positions) in self.groups.items():
            regs = image[idx]
            readable[positions] = ok[idx].all(axis=1)
            if idx.shape[1] == 1:
                raw = regs[:, 0]
                unsigned[positions] = raw
                value[positions] = raw.view(np.int16) if type_ == "s16" else raw
            else:
                u32 = (regs[:, 0].astype(np.uint32) << 16) | regs[:, 1]
                unsigned[positions] = u32
                if type_ == "s32":
                    value[positions] = u32.view(np.int32)
                elif type_ == "f32":
                    value[positions] = u32.view(np.float32)
                else:
                    value[positions] = u32
        sf = np.zeros(self.size, dtype=np.float64)
        bad_sf = np.zeros(self.size, dtype=np.bool_)
        if self.has_sf.any():
            at = self.sf_index[self.has_sf]
            raw_sf = image[at].view(np.int16).astype(np.float64)
            bad_sf[self.has_sf] = ~ok[at] | (np.abs(raw_sf) > SF_LIMIT)
            sf[self.has_sf] = np.where(bad_sf[self.has_sf], 0.0, raw_sf)
        p = self.per
        # Dividing by 1000 (not multiplying by 0.001) gives the correctly rounded 3.304 V.
        si = value * p["mul"] * np.power(10.0, np.maximum(sf, 0.0))
        si /= p["div"] * np.power(10.0, np.maximum(-sf, 0.0))
        si += p["const"]
        unread = ~readable
        not_available = (self.has_missing & (unsigned == self.missing)) | np.isnan(value)
        with np.errstate(invalid="ignore"):
            out_of_range = ~((si >= p["lo"]) & (si <= p["hi"])) & ~np.isnan(si)
        si[unread | not_available | bad_sf | out_of_range] = math.nan
        decoded = Decoded({f.name: si[s] for f, s in self.slices})
        checks = (
            (unread, Quality.MISSING, "not readable"),
            (not_available & readable, Quality.MISSING, "reported as not available"),
            (
                bad_sf & readable & ~not_available,
                Quality.DECODE_ERROR,
                "has no usable scale factor",
            ),
            (out_of_range, Quality.OUT_OF_RANGE, "outside the plausible range"),
        )
        for mask, quality, why in checks:
            if mask.any():
                optional_ok = mask is not unread and quality is Quality.MISSING
                decoded.problems.extend(self._notes(mask, value, quality, why, optional_ok))
        return decoded

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
