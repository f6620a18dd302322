"""Tables of the experiment commands: per-seed numbers -> mean ± std cells, Markdown and CSV.

`Table` holds rows x columns of per-seed values and writes them as Markdown (for people) and
CSV (one line per cell, for programs; `read_table_csv` reads it back). `write_report` writes a
command's tables and its run list (`<command>_runs.csv`).
"""
import csv
import io
import math
import os
from typing import Dict, List

import numpy as np

from mgr_jax.experiments.runs import get_lambda

# Display names of the training methods, as the paper's tables write them, in Table 1's order.
TABLE_LABELS = {"base": "Base Model", "gda": "GDA", "gda_mh": "GDA+MH", "gda_ssl": "GDA+SSL",
                "gda_mps": "GDA+MPS", "pcr": "PCR", "mgr": "MGR (PCR+MPS)"}
DATASET_LABELS = {"cars": "Cars", "aircraft": "Aircraft", "birds": "Birds", "dtd": "DTD",
                  "flowers": "Flower", "pets": "Pets", "digits": "Digits"}
# results.json numbers copied into `<command>_runs.csv`.
RESULT_KEYS = ("test_top1", "val_top1", "best_epoch", "wall_clock_s", "steps_per_s")


# ----------------------------------------------------------------------------- statistics

def mean_std(values, ddof=1):
    """(mean, std, n) over the finite values; std is the sample standard deviation (ddof=1),
    NaN with fewer than two values."""
    v = np.asarray([float(x) for x in values if x is not None and np.isfinite(float(x))],
                   np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    std = float(np.std(v, ddof=ddof)) if v.size > ddof else math.nan
    return float(np.mean(v)), std, int(v.size)


def format_cell(values, decimals=2):
    """"mean ± std" (just the mean for one value, "–" for none, a note on failed runs)."""
    mean, std, n = mean_std(values)
    if n == 0:
        return "–" if not values else "failed"
    text = f"{mean:.{decimals}f}" + (f" ± {std:.{decimals}f}" if n > 1 else "")
    failed = len(values) - n
    return text + (f" ({failed} failed)" if failed else "")


def _num(x):
    return "nan" if not np.isfinite(x) else f"{x:.6g}"


# ----------------------------------------------------------------------------- tables

class Table:
    """Rows x columns of per-seed values; each cell reported as mean ± std over its values.

    `decimals` is an int or {column or (row, column): int} (2 for cells not named).
    `highlight="max"` or `"min"` bolds the best mean of each column in the Markdown and, with
    `baseline_row`, underlines the cells better than that row (the paper's Table 1 style).
    """

    def __init__(self, key, title, row_header, columns=(), decimals=2, highlight=None,
                 baseline_row=None, notes=()):
        self.key, self.title, self.row_header = key, title, row_header
        self.columns = list(columns)
        self.rows: List[str] = []
        self.cells: Dict[tuple, list] = {}
        self.decimals, self.highlight, self.baseline_row = decimals, highlight, baseline_row
        self.notes = list(notes)

    def add(self, row, column, values):
        """Set a cell to a list of per-seed values (NaN for a failed run)."""
        if row not in self.rows:
            self.rows.append(row)
        if column not in self.columns:
            self.columns.append(column)
        self.cells[(row, column)] = [float(v) for v in values]

    def stats(self, row, column):
        return mean_std(self.cells.get((row, column), []))

    def markdown(self):
        out = [f"### {self.title}", ""] if self.title else []
        out.append("| " + " | ".join([self.row_header] + self.columns) + " |")
        out.append("|" + "---|" * (len(self.columns) + 1))
        best = {}
        if self.highlight:
            pick = max if self.highlight == "max" else min
            for col in self.columns:
                means = [self.stats(r, col)[0] for r in self.rows]
                finite = [m for m in means if np.isfinite(m)]
                best[col] = pick(finite) if finite else None
        for row in self.rows:
            cells = []
            for col in self.columns:
                values = self.cells.get((row, col))
                if values is None:
                    cells.append("")
                    continue
                text = format_cell(values, self._decimals(row, col))
                mean = self.stats(row, col)[0]
                if self._beats_baseline(row, col, mean):
                    text = f"<u>{text}</u>"
                if best.get(col) is not None and mean == best[col]:
                    text = f"**{text}**"
                cells.append(text)
            out.append("| " + " | ".join([row] + cells) + " |")
        if self.notes:
            out.append("")
            out.extend(self.notes)
        return "\n".join(out) + "\n"

    def _decimals(self, row, col):
        if isinstance(self.decimals, dict):
            return self.decimals.get((row, col), self.decimals.get(col, 2))
        return self.decimals

    def _beats_baseline(self, row, col, mean):
        if not self.highlight or self.baseline_row is None or row == self.baseline_row:
            return False
        base = self.stats(self.baseline_row, col)[0]
        if not (np.isfinite(base) and np.isfinite(mean)):
            return False
        return mean > base if self.highlight == "max" else mean < base

    def csv_text(self):
        """CSV with one line per cell: row, column, mean, std, n, values (';'-separated)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["row", "column", "mean", "std", "n", "values"])
        for row in self.rows:
            for col in self.columns:
                values = self.cells.get((row, col))
                if values is None:
                    continue
                mean, std, n = mean_std(values)
                writer.writerow([row, col, _num(mean), _num(std), n,
                                 ";".join(_num(v) for v in values)])
        return buf.getvalue()


def read_table_csv(path):
    """{(row, column): {"mean", "std", "n", "values"}} of a CSV written by Table."""
    out = {}
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            out[(rec["row"], rec["column"])] = {
                "mean": float(rec["mean"]), "std": float(rec["std"]), "n": int(rec["n"]),
                "values": [float(v) for v in rec["values"].split(";") if v]}
    return out


def cell_values(jobs, row, column, key="test_top1"):
    """Per-seed values of `key` of the jobs feeding one cell, in seed order."""
    picked = sorted((j for j in jobs if j.row == row and j.column == column),
                    key=lambda j: j.seed)
    return [j.value(key) for j in picked]


def fill_table(table, jobs, key="test_top1"):
    """Put every (row, column) of `jobs` into `table`, in the jobs' order."""
    for job in jobs:
        if (job.row, job.column) not in table.cells:
            table.add(job.row, job.column, cell_values(jobs, job.row, job.column, key))
    return table


# ----------------------------------------------------------------------------- reports

def write_runs_csv(path, jobs):
    """One line per distinct run: its cell, seed, status and results."""
    fields = ["name", "row", "column", "seed", "status", "method", "lambda"] + list(RESULT_KEYS)
    seen = set()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for job in jobs:
            key = (job.name, job.row, job.column)
            if key in seen:
                continue
            seen.add(key)
            r = job.result or {}
            writer.writerow([job.name, job.row, job.column, job.seed, job.status,
                             job.config.method, get_lambda(job.config)]
                            + [r.get(k, "") for k in RESULT_KEYS])


def write_report(workdir, stem, tables, jobs=(), header="", footer=""):
    """`<stem>.md` (all tables), `<table.key>.csv` per table, `<stem>_runs.csv`; the paths."""
    os.makedirs(workdir, exist_ok=True)
    md = [f"# {header}\n" if header else ""]
    md += [t.markdown() for t in tables]
    if footer:
        md.append(footer)
    paths = {"markdown": os.path.join(workdir, f"{stem}.md")}
    with open(paths["markdown"], "w") as f:
        f.write("\n".join(m for m in md if m))
    for t in tables:
        paths[t.key] = os.path.join(workdir, f"{t.key}.csv")
        with open(paths[t.key], "w", newline="") as f:
            f.write(t.csv_text())
    if jobs:
        paths["runs"] = os.path.join(workdir, f"{stem}_runs.csv")
        write_runs_csv(paths["runs"], jobs)
    print(f"wrote {paths['markdown']}", flush=True)
    return paths
