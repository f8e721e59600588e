"""Reading CAN captures that may hold garbage: bad lines are skipped and counted, never fatal.

A capture from site is often cut, hand-edited or written by a tool with its own dialect. One
bad line must not cost the frames around it, so each text line is parsed on its own and a line
that does not parse is recorded in :class:`CaptureProblems` (line number and reason) and
skipped. candump ``.log`` lines are parsed here, strictly: python-can's reader pads an odd number
of hex digits into a different payload and aborts the whole file on a line with a stray field.
``.asc`` and ``.trc`` use python-can's parsers line by line; ``.blf`` is binary, so a corrupt
block ends the capture there, keeping every frame before it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can

CAPTURE_SUFFIXES = (".log", ".asc", ".blf", ".trc")
SHOWN_PROBLEMS = 5  # the first few bad lines are quoted; the rest only counted

# candump -L: "(1700000000.123456) can0 123#DEADBEEF", optionally " R"/" T" (direction);
# "123##<flags><data>" is CAN FD, "123#R" or "123#R8" a remote frame.
_CANDUMP = re.compile(
    r"\((?P<ts>\d+(?:\.\d*)?)\)\s+(?P<channel>\S+)\s+(?P<id>[0-9A-Fa-f]{1,8})#(?P<data>\S*)"
    r"(?:\s+(?P<dir>[RTrt]))?"
)
_CAN_EFF_FLAG = 0x8000_0000  # linux/can.h: extended frame, error frame
_CAN_ERR_FLAG = 0x2000_0000
_CLASSIC_MAX_BYTES, _FD_MAX_BYTES = 8, 64


@dataclass
class CaptureProblems:
    """What could not be read from a capture: a count and the first few, with their lines."""

    count: int = 0
    shown: list[str] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        if len(self.shown) < SHOWN_PROBLEMS:
            self.shown.append(f"{where}: {reason}")

    def summary(self) -> str:
        more = f" (+{self.count - len(self.shown)} more)" if self.count > len(self.shown) else ""
        return f"{self.count} bad lines skipped: " + "; ".join(self.shown) + more


def read_frames(path: Path, problems: CaptureProblems | None = None) -> Iterator[can.Message]:
    """The capture's good frames in file order; the bad lines go to ``problems``.

    ValueError for a file python-can cannot read at all (wrong extension, no TRC header).
    """
    suffix = path.suffix.lower()
    if suffix not in CAPTURE_SUFFIXES:
        raise ValueError(f"{path}: not a capture python-can reads ({', '.join(CAPTURE_SUFFIXES)})")
    problems = problems if problems is not None else CaptureProblems()
    if suffix == ".log":
        yield from _candump(path, problems)
    elif suffix == ".blf":
        yield from _binary(path, problems)
    else:
        with path.open(encoding="utf-8", errors="replace") as file:
            lines = _NumberedLines(file)
            reader_class = _ASC if suffix == ".asc" else _TRC
            reader = reader_class(lines, problems=problems)
            yield from reader


def parse_candump_line(line: str) -> can.Message | None:
    """One line of ``candump -L`` output; None for a blank line; ValueError says what is wrong."""
    text = line.strip()
    if not text:
        return None
    match = _CANDUMP.fullmatch(text)
    if match is None:
        raise ValueError(f"not a candump -L line: {_quote(text)}")
    id_text, data = match["id"], match["data"]
    can_id = int(id_text, 16)
    is_extended = len(id_text) > 3
    if not is_extended and can_id > 0x7FF:
        raise ValueError(f"standard id {id_text} above 7FF")
    channel: int | str = int(match["channel"]) if match["channel"].isdigit() else match["channel"]
    common: dict[str, Any] = {
        "timestamp": float(match["ts"]),
        "channel": channel,
        "is_rx": (match["dir"] or "R").upper() == "R",
    }
    if can_id & _CAN_ERR_FLAG:
        return can.Message(is_error_frame=True, arbitration_id=can_id & 0x1FFF_FFFF, **common)
    common.update(arbitration_id=can_id & 0x1FFF_FFFF, is_extended_id=is_extended)
    if data[:1] in ("R", "r"):
        length = data[1:] or "0"
        if not length.isdigit() or int(length) > _CLASSIC_MAX_BYTES:
            raise ValueError(f"bad remote frame length {data[1:]!r}")
        return can.Message(is_remote_frame=True, dlc=int(length), **common)
    is_fd, flags, limit = data[:1] == "#", 0, _CLASSIC_MAX_BYTES
    if is_fd:
        if len(data) < 2 or data[1] not in "0123456789ABCDEFabcdef":
            raise ValueError("CAN FD frame without its flags digit")
        flags, data, limit = int(data[1], 16), data[2:], _FD_MAX_BYTES
    if len(data) % 2:
        raise ValueError(f"odd number of hex digits ({len(data)}) in data {data!r}")
    try:
        payload = bytes.fromhex(data)
    except ValueError:
        raise ValueError(f"data {data!r} is not hexadecimal") from None
    if len(payload) > limit:
        raise ValueError(f"{len(payload)} data bytes, more than {limit}")
    return can.Message(
        data=payload,
        dlc=len(payload),
        is_fd=is_fd,
        bitrate_switch=bool(flags & 1),
        error_state_indicator=bool(flags & 2),
        **common,
    )


def _candump(path: Path, problems: CaptureProblems) -> Iterator[can.Message]:
    with path.open(encoding="utf-8", errors="replace") as file:
        for number, line in enumerate(file, 1):
            try:
                msg = parse_candump_line(line)
            except ValueError as exc:
                problems.add(f"line {number}", str(exc))
                continue
            if msg is not None:
                yield msg


def _binary(path: Path, problems: CaptureProblems) -> Iterator[can.Message]:
    count = 0
    try:
        with can.LogReader(path) as reader:
            for msg in reader:
                count += 1
                yield msg
    except Exception as exc:  # python-can's BLF reader raises struct/zlib errors on corruption
        problems.add(f"after frame {count}", f"unreadable from here on ({exc!r})")


def _quote(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


class _NumberedLines:
    """A text file for python-can's readers that knows the number of the line last handed out."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.number = 0

    def __iter__(self) -> _NumberedLines:
        return self

    def __next__(self) -> str:
        line = next(self._file)
        self.number += 1
        return str(line)

    def close(self) -> None:
        self._file.close()


def _checked(msg: can.Message | None) -> can.Message | None:
    """python-can fills a frame with fewer data bytes than its DLC says without complaint."""
    if msg is None or msg.is_remote_frame or msg.is_error_frame:
        return msg
    if len(msg.data) != msg.dlc:
        raise ValueError(f"{len(msg.data)} data bytes for DLC {msg.dlc}")
    return msg


class _ASC(can.ASCReader):
    """python-can's .asc parser, one frame line at a time."""

    def __init__(self, file: _NumberedLines, problems: CaptureProblems) -> None:
        super().__init__(file)  # type: ignore[arg-type]
        self._lines, self._problems = file, problems

    def _process_classic_can_frame(self, line: str, msg_kwargs: dict[str, Any]) -> can.Message:
        return self._guarded(super()._process_classic_can_frame, line, msg_kwargs)

    def _process_fd_can_frame(self, line: str, msg_kwargs: dict[str, Any]) -> can.Message:
        return self._guarded(super()._process_fd_can_frame, line, msg_kwargs)

    def _guarded(
        self, parse: Callable[[str, dict[str, Any]], can.Message], line: str, kw: dict[str, Any]
    ) -> can.Message:
        try:
            return _checked(parse(line, kw))  # type: ignore[return-value]
        except (ValueError, IndexError, TypeError) as exc:
            self._problems.add(f"line {self._lines.number}", f"{exc} in {_quote(line)}")
            return None  # type: ignore[return-value]  # the reader skips None


class _TRC(can.TRCReader):
    """python-can's PCAN .trc parser; a line it cannot parse is recorded instead of fatal (a
    bad number) or dropped silently (a short line)."""

    def __init__(self, file: _NumberedLines, problems: CaptureProblems) -> None:
        super().__init__(file)  # type: ignore[arg-type]
        self._lines, self._problems = file, problems

    def _parse_line(self, line: str) -> can.Message | None:
        try:
            cols = tuple(line.split(maxsplit=self._num_columns))
            return _checked(self._parse_cols(cols))
        except (ValueError, IndexError, TypeError, KeyError) as exc:
            reason = str(exc) or type(exc).__name__
            self._problems.add(f"line {self._lines.number}", f"{reason} in {_quote(line)}")
            return None
