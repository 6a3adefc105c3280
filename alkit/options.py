"""The command line's option types: each parses one option's text and refuses bad values at parse time
(argparse turns the ``ArgumentTypeError`` into a usage line and exit 2), before any work."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path


def shard(value: str) -> tuple[int, int]:
    """``K/N`` with 1 <= K <= N, for ``compare --shard``."""
    k, sep, count = value.partition("/")
    if not (sep and k.isdigit() and count.isdigit() and 1 <= int(k) <= int(count)):
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N (e.g. 1/2), got {value!r}")
    return int(k), int(count)


def devices(value: str) -> int | str:
    """Lightning's ``devices``: a count, or a spec such as ``auto`` or ``0,1``."""
    return int(value) if value.isdigit() else value


def whole(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: a whole number in ``[lo, hi]`` (argparse turns the error into exit 2)."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if not lo <= number <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {number}")
        return number
    parse.__name__ = "whole number"
    return parse


def number(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if not (math.isfinite(number) and (lo < number if lo_open else lo <= number) and number <= hi):
            raise argparse.ArgumentTypeError(f"must be {'above' if lo_open else 'at least'} {lo:g} and at most "
                                             f"{hi:g}, got {value}")
        return number
    parse.__name__ = "number"
    return parse


def out_dir(value: str) -> str:
    """An argparse type: an output folder that exists as a folder or can be made (not a file, not under one)."""
    path = Path(value)
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty")
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} exists and is not a folder")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: {parent} is a file, not a folder")
    return value


def out_file(value: str) -> str:
    """An argparse type: an output file that is not a folder and whose folder can be made."""
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty")
    if Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a folder; give a file name")
    out_dir(str(Path(value).parent))
    return value


MPP = number(0, 1000, lo_open=True)  # µm/px: 0.1 (60x) .. a few hundred (thumbnails)
SEED = whole(0, 2**32 - 1)  # numpy seeds are non-negative
