"""Shared pieces of the fuzz tests: hypothesis profiles, byte/text mutations, and a per-example time limit.

Profiles: "fuzz" (the default run: fixed examples, a few seconds per test) and "fuzz-slow" (tests marked slow:
many more, freshly random examples). Neither keeps an example database (Hypothesis still caches
constants in a self-gitignored .hypothesis folder).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile(
    "fuzz",
    max_examples=1500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz-slow",
    max_examples=20000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("fuzz")
FUZZ_SLOW = settings.get_profile("fuzz-slow")


class Hang(Exception):
    """An input that took longer than the per-example limit."""


@contextmanager
def time_limit(seconds: float):
    """Fail (instead of hanging the run) when the block takes longer than `seconds` (main thread, POSIX)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum, frame):
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


BYTE_OPS = ("flip", "flip", "set", "truncate", "delete", "insert_piece", "duplicate")
# Text mutations mostly keep the syntax, so that most mutants parse and reach the upgrade code.
TEXT_OPS = (
    "insert_at_space",
    "insert_at_space",
    "insert_at_space",
    "insert_piece",
    "delete_line",
    "duplicate_line",
    "flip",
)


def _apply(data: bytes, ops: list, pieces: list[bytes]) -> bytes:
    out = bytearray(data)
    for op, position, value in ops:
        at = position % (len(out) + 1)
        if op == "flip" and out:
            out[at % len(out)] ^= 1 << (value % 8)
        elif op == "set" and out:
            out[at % len(out)] = value % 256
        elif op == "truncate":
            del out[at:]
        elif op == "delete":
            del out[at : at + 1 + value % 64]
        elif op == "insert_piece":
            out[at:at] = pieces[value % len(pieces)]
        elif op == "insert_at_space":  # between tokens
            space = out.find(b" ", at)
            at = len(out) if space < 0 else space
            out[at:at] = pieces[value % len(pieces)]
        elif op == "duplicate":
            out[at:at] = out[at : at + 1 + value % 256]
        elif op in ("delete_line", "duplicate_line"):
            start = out.rfind(b"\n", 0, at) + 1
            end = out.find(b"\n", at)
            end = len(out) if end < 0 else end + 1
            if op == "delete_line":
                del out[start:end]
            else:
                out[start:start] = out[start:end]
    return bytes(out)


def mutated(bases: list[bytes], pieces: list[bytes], max_ops: int = 4, ops=BYTE_OPS):
    """A strategy for one of `bases` after a few mutations (`ops`): bit flips, byte changes, truncations,
    deletions, duplications, line edits, and insertions of `pieces` (e.g. a whole small caffemodel, or
    prototxt fields)."""
    op = st.tuples(st.sampled_from(ops), st.integers(0, 1 << 20), st.integers(0, 255))
    return st.builds(
        lambda base, chosen: _apply(bases[base], chosen, pieces),
        st.integers(0, len(bases) - 1),
        st.lists(op, min_size=1, max_size=max_ops),
    )
