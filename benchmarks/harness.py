"""The one harness every benchmark uses: timers, interleaved rounds, statistics, the machine, the CSV.

Every result is a row of one schema (SCHEMA), appended to the CSV of the machine kind it was
measured on: `benchmarks/results/<kind>.csv` (`nvidia-h200`, `nvidia-h200-x2`, `cpu-amd-epyc`, …).
`python -m benchmarks.report` renders docs/results.md from those files.

Columns:
  what      the table the row belongs to (kernel, train_step, cpu_path, paper_table1, …)
  variant   what was measured within it (gelu, kgelu, kgelu-site, mlp-adult/gelu, …)
  dtype     bf16, fp32, float32, … ("" where none applies)
  shape     the workload: a tensor shape (8192x3072), a model and batch (gpt2-small 8x1024), …
  device    the processor measured: a GPU's name, or a CPU's model and core count
  metric    the quantity, its unit in the name (fwd_device_us, step_ms, ratio_vs_gelu, …)
  p50 p20 p80  its median and 20th/80th percentiles over the rounds (p20/p80 empty where there
            was one measurement). Rows aggregated over seeds (paper_*): p50 is the mean over the
            seeds and p20/p80 are mean − std / mean + std (empty for one seed).
  commit    the code measured (git short hash, "+dirty" with uncommitted changes; empty: not recorded)
  date      UTC, "YYYY-MM-DD HH:MM" (or the day alone where the time was not recorded)
  command   the command line that produced the row: each table cites it

Timing: every benchmark builds all its variants first, then runs them in rounds, one sample of each
per round in a rotating order (`interleave`), so drift of clocks and neighbours hits all alike.

    python -m benchmarks.harness kind                        # this machine's kind
    python -m benchmarks.harness merge OUT/nvidia-h200.csv   # append rows measured elsewhere
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import csv
import io
import math
import os
import platform
import pstats
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = ("what", "variant", "dtype", "shape", "device", "metric", "p50", "p20", "p80", "commit", "date", "command")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_ENV = "BENCH_RESULTS"  # a folder for the CSVs instead of benchmarks/results (a GPU machine's $OUT)
KIND_ENV = "BENCH_MACHINE_KIND"  # the machine kind, instead of detecting it
COMMIT_ENV = "BENCH_COMMIT"  # the commit, where the tree has no .git (a copied working tree)
RECORDED_ENV_PREFIX = "HF_KGELU_"  # settings that change what is measured: part of the command
UNRECORDED_ENV = ("HF_KGELU_CACHE",)


class SchemaError(ValueError):
    """A row or a CSV that does not have exactly the columns of SCHEMA."""


# ---------------------------------------------------------------------------------------------
# statistics


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0 ≤ q ≤ 1) by linear interpolation between the sorted samples."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Stats:
    p50: float
    p20: float | None = None
    p80: float | None = None

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        """Median and 20th/80th percentiles; a single sample has no spread."""
        if len(samples) == 1:
            return cls(float(samples[0]))
        return cls(percentile(samples, 0.5), percentile(samples, 0.2), percentile(samples, 0.8))

    @classmethod
    def over_seeds(cls, values: Iterable[float | None]) -> Stats | None:
        """The schema's convention for seed aggregates: p50 the mean, p20 / p80 the mean ∓ the sample
        standard deviation (one value: no spread; none: None). Missing and NaN values are left out."""
        values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if not values:
            return None
        if len(values) == 1:
            return cls(values[0])
        mean, std = statistics.fmean(values), statistics.stdev(values)
        return cls(mean, mean - std, mean + std)

    def scaled(self, factor: float) -> Stats:
        return Stats(*(None if v is None else v * factor for v in (self.p50, self.p20, self.p80)))

    def text(self, spec: str = ".1f") -> str:
        """"p50 (p20–p80)", or p50 alone without a spread."""
        spread = "" if self.p20 is None else f" ({self.p20:{spec}}–{self.p80:{spec}})"
        return f"{self.p50:{spec}}{spread}"


def ratios(samples: Sequence[float], base: Sequence[float]) -> list[float]:
    """Per-round ratios of two interleaved sample lists (drift common to a round cancels)."""
    return [a / b for a, b in zip(samples, base, strict=True)]


# ---------------------------------------------------------------------------------------------
# timing


def interleave(cases: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list]:
    """Samples of every case, one per round, the order rotating each round. A case is a function
    taking one sample (a time, or a dict of figures) and returning it."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    samples: dict[str, list] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(cases[name]())
    return samples


def _cuda_sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def wall_ms(fn: Callable[[], object], calls: int = 1) -> float:
    """Wall milliseconds per call of `calls` calls (perf_counter), queued CUDA work finished
    before and after: on a CPU the whole time, on a GPU with an idle device the host's."""
    _cuda_sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _cuda_sync()
    return (time.perf_counter() - start) * 1e3 / calls


def issue_ms(fn: Callable[[], object]) -> float:
    """Milliseconds until fn returns, nothing synchronised: the host's time to issue its work
    (≈ its whole time where the host is the bottleneck)."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def cuda_ms(fn: Callable[[], object], calls: int = 1) -> float:
    """Milliseconds per call between two CUDA events around `calls` calls, waited for."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def capture_graph(body: Callable[[], object], reset: Callable[[], object] = lambda: None, warmup: int = 2):
    """`body` captured in a CUDA graph, after `warmup` runs on a side stream (allocator and
    autotuning settle there); `reset` runs before each (e.g. clearing .grad)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            reset()
            body()
    torch.cuda.current_stream().wait_stream(side)
    reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    graph.replay()
    return graph


def replay_ms(graph, replays: int) -> float:
    """Device milliseconds per replay of a captured graph (no host work in between)."""
    return cuda_ms(graph.replay, replays)


def profile_calls(fn: Callable[[], object], calls: int, top: int = 25) -> str:
    """cProfile of `calls` calls of fn (CUDA synced around them): the functions with the most
    own time, where a path's host time goes."""
    _cuda_sync()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    _cuda_sync()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


@contextlib.contextmanager
def switches(torch_path: bool = False, op_only: bool = False):
    """The package settings a benchmark variant runs under (`hf_kgelu.ops.settings`), for the block
    only: the torch path instead of the kernels (as HF_KGELU_FORCE_REFERENCE), or every call through
    the op with the C++ site path off (as HF_KGELU_NATIVE=0)."""
    from hf_kgelu.ops import settings

    changes = {}
    if torch_path:
        changes["force_reference"] = True
    if op_only:
        changes["native"] = False
    with settings.override(**changes):
        yield


# ---------------------------------------------------------------------------------------------
# the machine, the code, the command


def slug(text: str) -> str:
    """A processor's name as a file-name part: "Intel(R) Xeon(R) Processor" -> "intel-xeon"."""
    text = re.sub(r"\((r|tm)\)|@.*$|\b\d+-core\b|\bprocessor\b|\bcpu\b", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def cpu_model() -> str:
    """The CPU's model name ("Intel Xeon", "AMD EPYC 7B13"), from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1]
                    name = re.sub(r"\((R|TM)\)|@.*$|\b\d+-Core\b|\bProcessor\b|\bCPU\b", " ", name)
                    return " ".join(name.split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_description() -> str:
    """What the `device` column says of a CPU: its model and core count."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def _gpus() -> tuple[str, int] | None:
    """(name of GPU 0, number of GPUs), or None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0), torch.cuda.device_count()


def kind_for(gpus: tuple[str, int] | None, cpu: str) -> str:
    """The machine kind: the GPU's name and count (nvidia-h200, nvidia-h200-x2, …), else cpu-<model>."""
    if gpus is not None:
        name, count = gpus
        return slug(name) + (f"-x{count}" if count > 1 else "")
    return "cpu-" + slug(cpu)


def machine_kind(override: str | None = None) -> str:
    """This machine's kind (the name of its results CSV): `override`, else $BENCH_MACHINE_KIND, else detected."""
    kind = override or os.environ.get(KIND_ENV) or kind_for(_gpus(), cpu_model())
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", kind):
        raise ValueError(f"machine kind {kind!r}: lower-case letters, digits and '-' only (it names a CSV file)")
    return kind


def device_name() -> str:
    """The `device` of a row measured on this machine's accelerator, or its CPU without one."""
    gpus = _gpus()
    return gpus[0] if gpus else cpu_description()


def git_commit() -> str:
    """The commit of the code measured: $BENCH_COMMIT, else git's short hash (+dirty with
    uncommitted changes to tracked files), else "" (not a git checkout)."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]

    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "--short=7", "HEAD")
        if head.returncode != 0:
            return ""
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.stdout.strip() + ("+dirty" if dirty else "")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")


def command_line(entry: str, argv: Sequence[str]) -> str:
    """How to run this again: the HF_KGELU_* settings in effect, then `entry` (a module run with
    `python -m`, or a script path) and its arguments."""
    settings = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
                if k.startswith(RECORDED_ENV_PREFIX) and k not in UNRECORDED_ENV]
    runner = ["python", entry] if entry.endswith(".py") else ["python", "-m", entry]
    return " ".join([*settings, shlex.join([*runner, *argv])])


# ---------------------------------------------------------------------------------------------
# rows and CSV files


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return "nan" if math.isnan(value) else f"{value:.10g}"


def check_row(row: Mapping) -> None:
    """A row must have exactly SCHEMA's columns and a number (or nan) in p50."""
    columns = set(row)
    if columns != set(SCHEMA):
        missing = [c for c in SCHEMA if c not in columns]
        unexpected = sorted(columns - set(SCHEMA))
        raise SchemaError(f"row refused: missing columns {missing}, unexpected columns {unexpected}; "
                          f"a row has exactly {', '.join(SCHEMA)}")
    for column in ("p50", "p20", "p80"):
        value = row[column]
        if value in ("", None) and column != "p50":
            continue
        try:
            float(value)
        except (TypeError, ValueError):
            raise SchemaError(f"row refused: {column} = {value!r} is not a number ({dict(row)})") from None


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a results CSV; its header must be SCHEMA."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != SCHEMA:
            raise SchemaError(f"{path}: header {reader.fieldnames} is not the results schema {list(SCHEMA)}")
        return list(reader)


def append_rows(path: Path, rows: Iterable[Mapping]) -> int:
    """Append rows to a results CSV (created with its header if new), every row checked first:
    nothing is written if one is refused. Returns the number of rows written."""
    rows = [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]
    for row in rows:
        check_row(row)
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        read_rows(path)  # refuses a file of another schema
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SCHEMA, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerows(rows)
    return len(rows)


class Recorder:
    """Collects the rows of one benchmark run (one command, one machine) and appends them to the
    machine kind's CSV."""

    def __init__(self, entry: str, argv: Sequence[str], *, kind: str | None = None, results: str | Path | None = None,
                 save: bool = True, device: str | None = None):
        self.kind = machine_kind(kind)
        self.folder = Path(results or os.environ.get(RESULTS_ENV) or RESULTS)
        self.path = self.folder / f"{self.kind}.csv"
        self.save_rows = save
        self.device = device or device_name()
        self.command = command_line(entry, argv)
        self.commit = git_commit()
        self.date = utc_now()
        self.rows: list[dict] = []
        self._saved = 0  # rows already appended (a run saves as it goes: a time box keeps what finished)

    @classmethod
    def from_args(cls, args: argparse.Namespace, entry: str, argv: Sequence[str] | None = None, **kwargs) -> Recorder:
        argv = sys.argv[1:] if argv is None else list(argv)
        return cls(entry, argv, kind=args.machine_kind, results=args.results, save=not args.no_save, **kwargs)

    def add(self, what: str, variant: str, metric: str, value: Stats | float | None, *, dtype: str = "", shape: str = "",
            device: str | None = None) -> None:
        if value is None:
            return
        stats = value if isinstance(value, Stats) else Stats(float(value))
        row = dict(what=what, variant=variant, dtype=dtype, shape=shape, device=device or self.device, metric=metric,
                   p50=_number(stats.p50), p20=_number(stats.p20), p80=_number(stats.p80), commit=self.commit,
                   date=self.date, command=self.command)
        check_row(row)
        self.rows.append(row)

    def save(self) -> Path | None:
        """Append the rows not appended yet to <results>/<kind>.csv (unless --no-save); where they went."""
        if not self.save_rows or not self.rows:
            return None
        new = self.rows[self._saved:]
        if new:
            append_rows(self.path, new)
            self._saved = len(self.rows)
            print(f"{len(new)} rows appended to {self.path}", flush=True)
        return self.path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes for where its rows go."""
    group = parser.add_argument_group("results")
    group.add_argument("--machine-kind", default=None,
                       help=f"the machine kind naming the CSV (default: ${KIND_ENV}, else detected from the GPUs "
                            "(nvidia-h200, nvidia-h200-x2, …) or the CPU (cpu-<model>))")
    group.add_argument("--results", default=None,
                       help=f"folder of the per-kind CSVs (default: ${RESULTS_ENV}, else benchmarks/results)")
    group.add_argument("--no-save", action="store_true", help="print only; append no rows")


def merge(paths: Iterable[Path], results: Path = RESULTS) -> int:
    """Append the rows of CSVs measured elsewhere (named <kind>.csv) to results/<kind>.csv,
    skipping rows it already has."""
    total = 0
    for path in map(Path, paths):
        target = results / path.name
        have = {tuple(r[c] for c in SCHEMA) for r in read_rows(target)} if target.exists() else set()
        new = [r for r in read_rows(path) if tuple(r[c] for c in SCHEMA) not in have]
        total += append_rows(target, new)
        print(f"{path}: {len(new)} new rows -> {target}")
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("kind", help="print this machine's kind")
    merging = sub.add_parser("merge", help="append rows from CSVs named <kind>.csv to benchmarks/results")
    merging.add_argument("csv", nargs="+", type=Path)
    merging.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.verb == "kind":
        print(machine_kind())
    else:
        merge(args.csv, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
