"""The one way every benchmark here measures: interleaved repetitions in one run, paired ratios with spread.

A shared machine's speed drifts by tens of percent within a minute (other builds, other trainings), so an
absolute number means little and a ratio of two numbers taken minutes apart means little more. Every
benchmark therefore runs its candidate and its baseline alternately, round after round, in one process (or
one driver), and reports the median of the per-round ratios and their range::

    rounds = interleave({"pipeline": run_pipeline, "floor": run_floor}, rounds=5, warmup=1)
    row = Row(measured="input pipeline, records/s", baseline=describe(rounds["floor"], "records/s"),
              ratio=paired(rounds["pipeline"], rounds["floor"]), goal=Goal(">=", 0.8), command=COMMAND)
    emit([row], args)

Each trial is a callable returning its own measurement (seconds, records/s, MB...): it does its own set-up
outside the timed part. Rounds rotate the order of the trials (AB, BA, AB...), so neither side always runs
first on a cold cache or last on a hot CPU. Within a round the trials run back to back, which is why the
ratio is taken per round (paired) and not as a ratio of two medians.

Every benchmark script takes ``--json`` (print its rows as one JSON document, for ``benchmarks/run_all.py``,
which ``make bench`` runs) and ``--smoke`` (tiny sizes, seconds: the tests run it so that no benchmark rots).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

GOAL_OPS = (">=", "<=")

CACHE_ENV = "KUBEFUSION_BENCH_CACHE"
"""A folder shared by the benchmarks of one ``make bench`` (``run_all.py`` sets it): the demo data and its
preprocessing artifacts are made once (``demo_setup.demo_artifacts``)."""


@dataclass(frozen=True)
class Spread:
    """The median of repeated values and their range over ``n`` rounds."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        if not values:
            raise ValueError("no values: a benchmark needs at least one timed round")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def format(self, digits: int = 2, suffix: str = "x") -> str:
        if self.n == 1:
            return f"{self.median:.{digits}f}{suffix} (1 round)"
        return f"{self.median:.{digits}f}{suffix} ({self.low:.{digits}f}-{self.high:.{digits}f}, {self.n} rounds)"


@dataclass(frozen=True)
class Goal:
    """``ratio op value``: the ratio meets the goal when, e.g., it is ``>=`` 0.8."""

    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in GOAL_OPS:
            raise ValueError(f"goal operator must be one of {', '.join(GOAL_OPS)} (got {self.op!r})")

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def format(self) -> str:
        return f"{'≥' if self.op == '>=' else '≤'} {self.value:g}"


@dataclass
class Row:
    """One figure of the benchmark table (``docs/benchmarks.md``)."""

    measured: str
    """What is measured, with the sizes that matter (``records/s, 64 px PNG -> 32 px, batch 64``)."""
    baseline: str
    """The same-run baseline and its median absolute value."""
    ratio: Spread
    ratio_of: str
    """What the ratio divides (``pipeline / floor``), so its direction is never a guess."""
    command: str
    goal: Goal | None = None
    note: str = ""
    """Always shown: what the number means, which side wins and why."""
    if_missed: str = ""
    """Shown only when the goal is missed: the cause found and what remains."""
    value: str = ""
    """The candidate's own median absolute value, for the reader's scale (noisy on a shared machine)."""
    unit: str = "x"
    """Suffix of the ratio (``x``); ``""`` for a plain number such as a p99 in seconds."""
    details: dict[str, Any] = field(default_factory=dict)
    """Machine-readable extras for tests and tools (not shown in the table)."""

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.goal.met(self.ratio.median)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Row":
        data = dict(raw)
        data["ratio"] = Spread(**data["ratio"])
        if data.get("goal") is not None:
            data["goal"] = Goal(**data["goal"])
        return cls(**data)


@dataclass
class Skipped:
    """A benchmark that did not run here (a tool absent, no GPU): its figure, and why it has no number."""

    measured: str
    reason: str
    command: str

    def to_dict(self) -> dict[str, Any]:
        return {"skipped": True, **asdict(self)}


@dataclass
class Report:
    rows: list[Row | Skipped] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"rows": [r.to_dict() for r in self.rows]})

    @classmethod
    def from_json(cls, text: str) -> "Report":
        raw = json.loads(text)
        return cls([Skipped(**{k: v for k, v in r.items() if k != "skipped"}) if r.get("skipped")
                    else Row.from_dict(r) for r in raw["rows"]])


# --------------------------------------------------------------------------------------------- measuring


def interleave(trials: Mapping[str, Callable[[], float]], *, rounds: int, warmup: int = 0,
               progress: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Run every trial once per round for ``warmup`` untimed rounds, then ``rounds`` kept ones, rotating the
    order each round. Returns {trial name: [measurement of round 0, 1, ...]} (warm-up rounds dropped)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1 (got {rounds})")
    names = list(trials)
    kept: dict[str, list[float]] = {name: [] for name in names}
    for index in range(warmup + rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            value = float(trials[name]())
            if index >= warmup:
                kept[name].append(value)
            if progress:
                progress(f"round {index + 1 - warmup if index >= warmup else 'warm-up'}: {name} {value:.4g}")
    return kept


def paired(numerators: Sequence[float], denominators: Sequence[float]) -> Spread:
    """The per-round ratios ``numerators[i] / denominators[i]`` (taken in the same round), as a Spread."""
    if len(numerators) != len(denominators):
        raise ValueError(f"unpaired rounds: {len(numerators)} against {len(denominators)}")
    return Spread.of([a / b for a, b in zip(numerators, denominators)])


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` took."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def describe(values: Sequence[float], unit: str, digits: int = 0) -> str:
    """``1234 records/s (median of 5)``: an absolute value for the reader's scale."""
    return f"{statistics.median(values):.{digits}f} {unit} (median of {len(values)})"


# ---------------------------------------------------------------------------------------- command line


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark takes."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the rows as one JSON document (for run_all.py)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs, measures nothing")
    p.add_argument("--rounds", type=int, help="interleaved timed rounds (default: the benchmark's own)")
    return p


_STARTED = time.monotonic()


def log(message: str) -> None:
    """Progress on stderr, with the seconds since the benchmark started: stdout carries the rows (``--json``)
    or the table."""
    print(f"[{time.monotonic() - _STARTED:7.1f} s] {message}", file=sys.stderr, flush=True)


def emit(rows: Sequence[Row | Skipped], args: argparse.Namespace) -> None:
    """Print the rows: one JSON document with ``--json``, else a markdown table."""
    if args.json:
        print(Report(list(rows)).to_json(), flush=True)
        return
    from table import render_rows  # noqa: PLC0415 (benchmarks/ is on sys.path when a script runs)

    print(render_rows(list(rows)), flush=True)


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
