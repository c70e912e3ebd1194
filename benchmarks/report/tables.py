"""What every section of the report uses: the latest rows, lookups, number formats, and Markdown
tables that cite the runs their figures came from."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import harness

KEY = ("what", "variant", "dtype", "shape", "device", "metric")  # one thing measured
SUPERSCRIPTS = "¹²³⁴⁵⁶⁷⁸⁹"
MODEL_ORDER = ("gpt2", "bert", "deit")


@dataclass
class Results:
    """The latest row of each thing per machine kind, in the order the files hold them."""

    rows: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, folder: Path, skip: Iterable[str] = ()) -> Results:
        latest: dict[tuple, dict] = {}
        for path in sorted(Path(folder).glob("*.csv")):
            if path.name in skip:
                continue
            for row in harness.read_rows(path):
                row["kind"] = path.stem
                latest.pop((path.stem, *(row[c] for c in KEY)), None)  # re-inserted: file order of the latest
                latest[(path.stem, *(row[c] for c in KEY))] = row
        return cls(list(latest.values()))

    def of(self, *whats: str, **match) -> list[dict]:
        return [r for r in self.rows if r["what"] in whats and all(r[k] == v for k, v in match.items())]


def groups(rows: Iterable[dict], *columns: str) -> dict[tuple, list[dict]]:
    """Rows by the values of `columns`, in order of first appearance."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[c] for c in columns), []).append(r)
    return out


class Index:
    """Rows looked up by (variant, metric) or any other columns."""

    def __init__(self, rows: Iterable[dict], columns: Sequence[str] = ("variant", "metric")):
        self.columns = columns
        self.rows = {tuple(r[c] for c in columns): r for r in rows}

    def get(self, *key) -> dict | None:
        return self.rows.get(tuple(key))

    def value(self, *key) -> float | None:
        row = self.get(*key)
        return None if row is None else float(row["p50"])


def num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def short(value: float | None, digits: int = 1) -> str:
    """`digits` decimals, one more where they would round the value: 0.6 -> "0.6", 0.65 -> "0.65"."""
    if value is None:
        return "–"
    return num(value, digits if abs(round(value, digits) - value) < 1e-9 else digits + 1)


def spread(row: dict | None, digits: int = 2) -> str:
    """"p50 (p20–p80)", or p50 alone."""
    if row is None:
        return "–"
    text = num(float(row["p50"]), digits)
    if row["p20"] and row["p80"]:
        text += f" ({num(float(row['p20']), digits)}–{num(float(row['p80']), digits)})"
    return text


def mean_std(row: dict | None, digits: int = 4) -> str:
    """A seed aggregate: "mean ± std" (p80 = mean + std), or the value alone for one seed."""
    if row is None:
        return "–"
    mean = float(row["p50"])
    if not row["p80"]:
        return num(mean, digits)
    return f"{num(mean, digits)} ± {num(float(row['p80']) - mean, digits)}"


def ratio(a: float | None, b: float | None, digits: int = 3) -> str:
    return "–" if a is None or not b else num(a / b, digits)


def _source_key(row: dict) -> tuple:
    return row["command"], row["kind"], row["device"], row["date"], row["commit"]


def sources_of(rows: Iterable[dict | None]) -> list[tuple]:
    return list(dict.fromkeys(_source_key(r) for r in rows if r is not None))


def source_line(rows: Iterable[dict]) -> str:
    """Where rows that all come from one run came from."""
    (source,) = sources_of(rows)
    return "Source: " + _source(*source)


def table(headers: Sequence[str], body: Sequence[tuple[Sequence[str], Sequence[dict | None]]], align: str | None = None,
          cite: bool = True) -> str:
    """A Markdown table whose rows carry the result rows they show, then (`cite`) where those came
    from: one line, or numbered lines with the numbers on the table's rows."""
    sources = sources_of(r for _, used in body for r in used)
    marks = [sorted({sources.index(_source_key(r)) for r in used if r is not None}) for _, used in body]
    align = align or "l" + "r" * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" if a == "l" else "---:" for a in align) + " |"]
    for (cells, _), keys in zip(body, marks, strict=True):
        cells = list(cells)
        if cite and len(sources) > 1:
            cells[0] += "".join(_superscript(k) for k in keys)
        lines.append("| " + " | ".join(cells) + " |")
    if cite and len(sources) == 1:
        lines += ["", "Source: " + _source(*sources[0])]
    elif cite and sources:
        lines += [""] + [f"{_superscript(i)} {_source(*s)}  " for i, s in enumerate(sources)]
        lines[-1] = lines[-1].rstrip()
    return "\n".join(lines)


def _superscript(index: int) -> str:
    return SUPERSCRIPTS[index] if index < len(SUPERSCRIPTS) else f"[{index + 1}]"


def _source(command: str, kind: str, device: str, date: str, commit: str) -> str:
    return (f"`{command}` on `{kind}` ({device}), {date}{' UTC' if ':' in date else ''}, "
            + (f"commit {commit}" if commit else "commit not recorded"))


def label(labels: dict[str, str], key: str) -> str:
    return labels.get(key, key)


def topic(title: str, intro: str, parts: Iterable[str]) -> str:
    parts = [p for p in parts if p]
    body = "\n\n".join(parts) if parts else "_No rows yet._"
    return f"## {title}\n\n{intro}\n\n{body}"


def elements(shape: str) -> int:
    """The element count of a shape: "8192x3072" -> 25165824, "65536 @ 1 thread" -> 65536."""
    return math.prod(int(d) for d in re.findall(r"\d+", shape.split(" @")[0]))


def model_rank(shape: str) -> int:
    """Where a model's rows go in a table: GPT-2, BERT, DeiT, then the rest."""
    return next((i for i, m in enumerate(MODEL_ORDER) if shape.startswith(m)), len(MODEL_ORDER))
