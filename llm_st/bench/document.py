"""The report of a benchmark folder: ``report.md``, a self-contained ``report.html`` and
the PNG figures they show (``llm-st report DIR``).

:func:`write_report` reads what :func:`llm_st.bench.runner.run_plan` left in ``DIR``
(``results.parquet``, else the cells' files through
:func:`~llm_st.bench.runner.collect_results`; ``plan.yaml``; the cells' run directories)
and writes, by default into ``DIR``::

    report.md          tables in Markdown, figures linked from figures/
    report.html        one file: the same tables as HTML, the figures embedded (base64),
                       inline CSS, nothing loaded from elsewhere
    figures/*.png      the plots of llm_st.bench.plots

The report holds, in order: per protocol (and protocol parameter) a table of the mean ±
sample standard deviation over seeds of the protocol's main metrics (MAE / MSE / RMSE /
MAPE, or precision / recall / F1 / AUC) per dataset and method, the best of each column
per dataset in bold; Tan et al.'s ablation verdicts for every adapter run with several
backbone modes; the figures (or why one was skipped); the cells that failed or did not
finish, with their errors; and what produced it: the plan verbatim, the software versions
and the machine. Protocols are handled generically: any protocol's cells get a table; the
figures that belong to one protocol (few-shot curves, imputation, shift) are drawn where
its cells exist.
"""

from __future__ import annotations

import base64
import datetime
import html
import importlib.metadata
import json
import logging
import math
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from llm_st.bench import plots
from llm_st.bench.machine import describe_machine
from llm_st.bench.published import Published, published
from llm_st.bench.report import (
    MAIN_METRICS,
    STAT_KEYS,
    ablation_comparison,
    ablation_verdicts,
    adapter_verdict,
    cell_text,
    count,
    higher_is_better,
    is_missing,
    seed_stats,
)
from llm_st.bench.runner import CELL_FILE, PLAN_FILE, collect_results
from llm_st.errors import ConfigError

logger = logging.getLogger("llm_st")

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FIGURES = "figures"
VERSION_PACKAGES = (
    "torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "llm-st",
    "numpy", "pandas", "matplotlib",
)  # fmt: skip
"""Packages whose versions every report lists (after Python's)."""
UNIT_PATTERN = re.compile(
    r"\b(mph|km/h|m/s|vehicles per \d+ minutes|kWh|kW|MW|counts)\b|(°C)", re.IGNORECASE
)


# ------------------------------------------------------------------ facts
def software_versions() -> dict[str, str]:
    """Python's version and each of :data:`VERSION_PACKAGES` installed (or ``not
    installed``), read from the package metadata (nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def unit_of(description: str) -> str | None:
    """The unit a dataset description names first (``speed in mph`` -> ``mph``)."""
    match = UNIT_PATTERN.search(description or "")
    if match is None:
        return None
    text = match.group(0)
    return text if text in ("°C", "kWh", "kW", "MW") else text.lower()


def number(value: Any) -> str:
    """A metric as the report prints it: four significant digits, whole numbers from
    10,000, ``-`` when missing."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(v):
        return "-"
    if v == 0:
        return "0"
    if abs(v) >= 1e4:
        return f"{v:.0f}"
    if abs(v) < 1e-3:
        return f"{v:.3e}"
    return f"{v:.4g}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


@dataclass
class CellFacts:
    """What the report needs of one cell's run directory besides the results table."""

    cell_id: str
    folder: Path
    model: str | None = None
    backbone: bool = False
    metric_scale: str | None = None
    objective: str | None = None
    probabilistic: bool = False
    spec: str | None = None
    data_dir: str | None = None
    error_type: str | None = None


def read_cell_facts(bench: Path, table: pd.DataFrame) -> dict[str, CellFacts]:
    """:class:`CellFacts` of every cell of the table (what its files hold)."""
    out = {}
    for row in table.drop_duplicates("cell_id").itertuples():
        folder = bench / (cell_text(row.run_dir) or f"cells/{row.cell_id}")
        cell = _read_json(folder / CELL_FILE)
        recipe = _read_yaml(folder / "recipe.yaml")
        model = recipe.get("model") or {}
        data = recipe.get("data") or {}
        objective = recipe.get("objective") or {}
        name = objective.get("name")
        loss = (objective.get("params") or {}).get("loss")
        pretrain = objective.get("pretrain")
        pretrain = pretrain.get("name") if isinstance(pretrain, dict) else pretrain
        metrics = _read_json(folder / cell.get("metrics_file", "metrics.json"))
        if not metrics.get("metric_scale"):
            metrics = {**_read_json(folder / "metrics.json"), **metrics}
        out[row.cell_id] = CellFacts(
            cell_id=row.cell_id,
            folder=folder,
            model=cell.get("model") or model.get("name"),
            backbone=bool(model.get("backbone")),
            metric_scale=metrics.get("metric_scale"),
            objective=None
            if name is None
            else (
                (f"{pretrain} pretraining + " if pretrain else "")
                + (f"{name} ({loss})" if loss else str(name))
            ),
            probabilistic=_probabilistic(name),
            spec=data.get("spec"),
            data_dir=data.get("data_dir"),
            error_type=(cell.get("error") or {}).get("type"),
        )
    return out


def _probabilistic(objective: str | None) -> bool:
    """Whether runs of this objective draw samples (a probabilistic objective)."""
    if not objective:
        return False
    from llm_st.objectives import get_objective_class

    try:
        return bool(get_objective_class(objective).probabilistic)
    except Exception:  # noqa: BLE001 - an objective unknown here
        return False


# ------------------------------------------------------------------ document blocks
@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Items:
    items: list[str]


@dataclass
class Code:
    text: str
    language: str = ""


@dataclass
class Table:
    head: list[str]
    rows: list[list[str]]
    bold: list[list[bool]] | None = None


@dataclass
class Image:
    path: Path
    rel: str
    alt: str
    caption: str


def _md_cell(text: str, bold: bool) -> str:
    text = str(text).replace("|", "\\|").replace("\n", " ")
    return f"**{text}**" if bold and text else text


def to_markdown(blocks: Sequence[Any]) -> str:
    """The blocks as Markdown (GitHub flavour: pipe tables, fenced code)."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Items):
            out.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Code):
            fence = "```"
            while fence in b.text:
                fence += "`"
            out.append(f"{fence}{b.language}\n{b.text.rstrip()}\n{fence}")
        elif isinstance(b, Table):
            bold = b.bold or [[False] * len(r) for r in b.rows]
            lines = ["| " + " | ".join(_md_cell(h, False) for h in b.head) + " |"]
            lines.append("|" + "|".join("---" for _ in b.head) + "|")
            for row, marks in zip(b.rows, bold, strict=True):
                cells = [_md_cell(c, m) for c, m in zip(row, marks, strict=True)]
                lines.append("| " + " | ".join(cells) + " |")
            out.append("\n".join(lines))
        elif isinstance(b, Image):
            out.append(f"![{b.alt}]({b.rel})\n\n*{b.caption}*")
    return "\n\n".join(out) + "\n"


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
td strong { color: #0b5d1e; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: .8em; overflow-x: auto;
      font-size: 0.88em; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-style: italic; color: #555; margin-top: .3em; }
"""


def to_html(blocks: Sequence[Any], title: str) -> str:
    """The blocks as one HTML page: inline CSS, figures embedded as base64 PNGs."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
    ]
    for b in blocks:
        if isinstance(b, Heading):
            anchor = re.sub(r"[^a-z0-9]+", "-", b.text.lower()).strip("-")
            out.append(f'<h{b.level} id="{e(anchor)}">{e(b.text)}</h{b.level}>')
        elif isinstance(b, Para):
            out.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Items):
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Code):
            out.append(f"<pre><code>{e(b.text.rstrip())}</code></pre>")
        elif isinstance(b, Table):
            bold = b.bold or [[False] * len(r) for r in b.rows]
            head = "".join(f"<th>{e(h)}</th>" for h in b.head)
            body = "".join(
                "<tr>"
                + "".join(
                    f"<td><strong>{e(str(c))}</strong></td>" if m else f"<td>{e(str(c))}</td>"
                    for c, m in zip(row, marks, strict=True)
                )
                + "</tr>"
                for row, marks in zip(b.rows, bold, strict=True)
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Image):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.alt)}" '
                f'data-file="{e(b.rel)}"><figcaption>{e(b.caption)}</figcaption></figure>'
            )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ the report
@dataclass
class _Dataset:
    """Facts of one dataset label of the table: scale, unit, frequency."""

    scale: str | None = None
    unit: str | None = None
    freq: str | None = None
    spec: str | None = None

    def scale_text(self) -> str | None:
        """For axis labels: ``original units: mph``, ``original units``, ``normalized``."""
        if self.scale == "normalized":
            return "normalized"
        if self.scale == "original":
            return f"original units: {self.unit}" if self.unit else "original units"
        return None

    def short(self) -> str:
        """For the tables' scale column."""
        if self.scale == "original":
            return f"original ({self.unit})" if self.unit else "original"
        return self.scale or "-"


@dataclass
class _Report:
    bench: Path
    out: Path
    table: pd.DataFrame
    plan_text: str
    plan_raw: dict[str, Any]
    facts: dict[str, CellFacts]
    predict: bool
    max_windows: int | None
    device: str | None
    blocks: list[Any] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    _data: dict[tuple[str, str | None], Any] = field(default_factory=dict)
    _datasets: dict[str, _Dataset] = field(default_factory=dict)

    # ---- data
    def data(self, spec: str, data_dir: str | None = None) -> Any:
        key = (spec, data_dir)
        if key not in self._data:
            from llm_st.data import load

            self._data[key] = load(spec, data_dir=data_dir)
        return self._data[key]

    def plan_spec(self, name: str) -> str | None:
        for d in self.plan_raw.get("datasets") or []:
            if isinstance(d, dict) and d.get("name") == name:
                return d.get("spec")
            if isinstance(d, str) and d == name:
                return d
        return None

    def dataset(self, label: str) -> _Dataset:
        """Scale (the cells' metric scale), unit (from the data's description) and step
        of a dataset label (``A->B``: the target's data)."""
        if label in self._datasets:
            return self._datasets[label]
        rows = self.table[self.table["dataset"] == label]
        cells = [self.facts[c] for c in rows["cell_id"].unique() if c in self.facts]
        scales = [c.metric_scale for c in cells if c.metric_scale]
        info = _Dataset(scale=scales[0] if scales else None)
        data_dir = next((c.data_dir for c in cells if c.spec), None)
        if "->" in label:
            info.spec = self.plan_spec(label.split("->", 1)[1])
        else:
            info.spec = next((c.spec for c in cells if c.spec), None) or self.plan_spec(label)
        if info.spec:
            try:
                data = self.data(info.spec, data_dir)
                info.unit, info.freq = unit_of(data.description), data.freq
            except Exception as exc:  # noqa: BLE001 - a report must not fail on one dataset
                logger.warning("report: cannot load %s for its units: %s", info.spec, exc)
        self._datasets[label] = info
        return info

    def scales(self) -> dict[str, str]:
        out = {}
        for label in self.table["dataset"].dropna().unique():
            text = self.dataset(label).scale_text()
            if text:
                out[label] = text
        return out

    def figure(self, name: str, drawn: Path | None, alt: str, caption: str, skip: str) -> None:
        """Add a drawn figure (with its caption), or the reason it was skipped."""
        if drawn is None:
            self.blocks.append(Para(f"Skipped: {skip}"))
            return
        self.files[name] = drawn
        rel = drawn.relative_to(self.out).as_posix()
        self.blocks.append(Image(drawn, rel, alt, caption))


def _protocol_order(table: pd.DataFrame, plan_raw: dict[str, Any]) -> list[str]:
    names = []
    for p in plan_raw.get("protocols") or []:
        name = p.get("name") if isinstance(p, dict) else p
        if isinstance(name, str):
            names.append(name)
    return list(dict.fromkeys([*names, *table["protocol"].dropna().tolist()]))


def _step_of(rows: pd.DataFrame) -> str | None:
    steps = list(dict.fromkeys(rows["horizon_step"].dropna()))
    if not steps:
        return None
    return "avg" if "avg" in steps else steps[0]


def _metrics_of(rows: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(rows["metric"].dropna()))
    main = [m for m in MAIN_METRICS if m in present]
    return main or present


def _cell(mean: float, std: float, seeds: int, scale: float = 1.0) -> str:
    text = number(scale * mean)
    if seeds > 1 and _finite(std):
        text += f" ± {number(scale * std)}"
    return text


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _metric_head(metric: str) -> str:
    name = plots.METRIC_NAMES.get(metric, metric)
    return f"{name} (%)" if metric in plots.PERCENT else name


def results_tables(report: _Report, stats: pd.DataFrame) -> None:
    """Per protocol and protocol parameter: mean ± std per dataset x method, best bold."""
    r, table = report, report.table
    r.blocks.append(Heading(2, "Results"))
    r.blocks.append(
        Para(
            "Mean ± sample standard deviation (n-1) over seeds of each cell's test metrics; "
            "one value where one seed finished. In bold: the best method of each dataset per "
            "column (lowest error; highest precision, recall, F1 and AUC). The metric scale "
            "column gives the units: 'original (mph)' after inverse scaling, 'normalized' on "
            "the scaled values. MAPE in percent; trainable parameters of the first seed; "
            "training time averaged over seeds."
        )
    )
    if not _protocol_order(table, r.plan_raw):
        r.blocks.append(Para("No results: the folder holds no cells."))
    for protocol in _protocol_order(table, r.plan_raw):
        r.blocks.append(Heading(3, f"Protocol {protocol}"))
        mine = stats[stats["protocol"] == protocol]
        cells = table[table["protocol"] == protocol]["cell_id"].nunique()
        if mine.empty:
            what = "no cells" if not cells else f"none of its {cells} cells finished"
            r.blocks.append(Para(f"No results: {what}."))
            continue
        params = list(dict.fromkeys(mine["protocol_param"].tolist()))
        # a parameter that names a property of each method (anomaly's score kind), not a
        # setting every method runs: one table with a column for it, so methods compare
        counts = mine.groupby(["dataset", "method"], dropna=False)["protocol_param"]
        per_method = len(params) > 1 and bool((counts.nunique(dropna=False) == 1).all())
        if per_method:
            r.blocks.append(
                Para(
                    "The protocol parameter differs by method here (each method runs one), "
                    "so one table holds them all, the parameter in its own column."
                )
            )
        for param in [None] if per_method else params:
            if per_method:
                group = mine
            elif is_missing(param):
                group = mine[mine["protocol_param"].isna()]
            else:
                group = mine[mine["protocol_param"] == param]
            step = _step_of(group)
            group = group[group["horizon_step"] == step]
            metrics = _metrics_of(group)
            if not is_missing(param):
                r.blocks.append(Heading(4, f"{protocol}: {param}"))
            steps = set(mine["horizon_step"].dropna()) - {"avg"}
            where = f"Scores at horizon step '{step}'"
            if step == "avg" and steps:
                where += " (the mean over the forecast steps; each step in the figures)"
            r.blocks.append(Para(where + "."))
            block, refs = _results_table(report, group.copy(), metrics, per_method)
            r.blocks.append(block)
            if refs:
                r.blocks.append(
                    Para(
                        "Published (normalized test MSE / MAE; not re-run here, so read the "
                        "setting): "
                        + "; ".join(
                            f"{e.method}: {e.source}" + (f" ({e.setting})" if e.setting else "")
                            for e in refs
                        )
                        + "."
                    )
                )


def _published_for(group: pd.DataFrame) -> dict[tuple[str, str, str], Published]:
    """The published figures of the rows of one results table, by (dataset, horizon,
    method): transfer rows only when the scaler was fit on the target (the papers' scale)."""
    out = {}
    for v in group.drop_duplicates(["dataset", "horizon", "method"]).itertuples(index=False):
        param = None if is_missing(v.protocol_param) else str(v.protocol_param)
        if v.protocol == "zero_shot_transfer" and "scaler fit on target" not in (param or ""):
            continue
        horizon = None if is_missing(v.horizon) else int(float(v.horizon))
        entry = published(v.protocol, v.dataset, v.method, horizon, param)
        if entry is not None:
            out[(v.dataset, cell_text(v.horizon), v.method)] = entry
    return out


def _results_table(
    report: _Report, group: pd.DataFrame, metrics: list[str], with_param: bool = False
) -> tuple[Table, list[Published]]:
    """The table of one protocol setting, and the published figures it shows."""
    horizons = group["horizon"].dropna().unique()
    with_h = len(horizons) > 1
    with_mode = group["backbone_mode"].notna().any()
    head = ["dataset", *(["horizon"] if with_h else []), "method"]
    head += ["protocol param"] if with_param else []
    head += ["backbone mode"] if with_mode else []
    head += [_metric_head(m) for m in metrics]
    with_scale = any(m.lower() not in plots.UNITLESS for m in metrics)
    head += ["metric scale"] if with_scale else []
    head += ["seeds", "trainable params", "train time (s)"]
    keys = ["dataset", "horizon", "method"]
    refs = _published_for(group)
    head += ["published MSE / MAE"] if refs else []
    group = group.assign(horizon=group["horizon"].map(cell_text))  # NA-free keys
    configs = group.drop_duplicates(keys)[keys + ["backbone_mode", "protocol_param"]]
    values = {
        (v["dataset"], v["horizon"], v["method"], v["metric"]): v for _, v in group.iterrows()
    }
    best: dict[tuple[Any, Any, str], float] = {}
    for (dataset, horizon), sub in group.groupby(["dataset", "horizon"]):
        for metric in metrics:
            means = sub[sub["metric"] == metric]["mean"].dropna()
            if sub["method"].nunique() > 1 and len(means) and means.max() > means.min():
                best[(dataset, horizon, metric)] = (
                    means.max() if higher_is_better(metric) else means.min()
                )
    rows, bold = [], []
    for c in configs.itertuples(index=False):
        first = None
        row = [c.dataset, *([c.horizon] if with_h else []), c.method]
        row += [cell_text(c.protocol_param) or "-"] if with_param else []
        row += [cell_text(c.backbone_mode) or "-"] if with_mode else []
        marks = [False] * len(row)
        seeds = 0
        for metric in metrics:
            v = values.get((c.dataset, c.horizon, c.method, metric))
            if v is None:
                row.append("-")
                marks.append(False)
                continue
            first = v if first is None else first
            seeds = max(seeds, int(v["seeds"]))
            scale = 100.0 if metric in plots.PERCENT else 1.0
            row.append(_cell(v["mean"], v["std"], int(v["seeds"]), scale))
            target = best.get((c.dataset, c.horizon, metric))
            marks.append(target is not None and v["mean"] == target)
        params = None if first is None or is_missing(first["trainable_params"]) else first
        row += [report.dataset(c.dataset).short()] if with_scale else []
        row += [
            str(seeds),
            "-" if params is None else count(int(params["trainable_params"])),
            "-" if first is None or not _finite(first["train_time_s"])
            else f"{float(first['train_time_s']):.3g}",
        ]  # fmt: skip
        if refs:
            ref = refs.get((c.dataset, c.horizon, c.method))
            row.append("-" if ref is None else f"{ref.mse:.3f} / {ref.mae:.3f}")
        marks += [False] * (len(row) - len(marks))
        rows.append(row)
        bold.append(marks)
    return Table(head, rows, bold), list(dict.fromkeys(refs.values()))


def ablation_section(report: _Report, stats: pd.DataFrame) -> None:
    """Tan et al.'s verdict per adapter with backbone-mode ablations."""
    r = report
    r.blocks.append(Heading(2, "Backbone ablations (Tan et al.)"))
    r.blocks.append(
        Para(
            "Tan et al. (NeurIPS 2024) ask whether the pretrained language model helps: each "
            "adapter run with its pretrained backbone is compared with the same adapter with "
            "random weights (random_init), one attention layer in place of the backbone "
            "(llm2attn) and no backbone (none). The error compared is MAE (MSE on the "
            "normalized scale) at the average over the horizon; a difference exceeds the seed "
            "spread when it is larger than the sum of the two standard deviations."
        )
    )
    found = False
    keys = ["protocol", "protocol_param", "dataset", "horizon"]
    avg = stats[stats["horizon_step"] == "avg"]
    for key, group in avg.groupby(keys, dropna=False, sort=False):
        rows = _ablation_rows(r, group)
        comparisons = ablation_comparison(rows)
        if not comparisons:
            continue
        found = True
        protocol, param, dataset, horizon = key
        where = f"{dataset}, protocol {protocol}" + (f" ({param})" if cell_text(param) else "")
        several = avg[(avg["protocol"] == protocol) & (avg["dataset"] == dataset)]
        if not is_missing(horizon) and several["horizon"].nunique() > 1:
            where += f", horizon {int(horizon)}"
        r.blocks.append(Heading(3, where))
        by_model = {row["model"]: row for row in rows if row["mode"] == "pretrained"}
        metric = comparisons[0]["metric"]
        head = ["adapter", "mode", "method", f"{metric.upper()} mean ± std"]
        head += [f"difference to pretrained ({metric.upper()})", "change", "seed spread"]
        head += ["exceeds spread", "verdict"]
        body = []
        for model in dict.fromkeys(c["model"] for c in comparisons):
            base = by_model[model]
            body.append(
                [model, "pretrained", base["method"],
                 _cell(base["test"]["avg"][metric], base["test_std"]["avg"][metric],
                       base["seeds"]), "-", "-", "-", "-", "reference"]
            )  # fmt: skip
            for c in (c for c in comparisons if c["model"] == model):
                row = next(x for x in rows if x["model"] == model and x["mode"] == c["mode"])
                exceeds = {None: "unknown (one seed)", True: "yes", False: "no"}
                body.append(
                    [model, c["mode"], row["method"], _cell(c["value"], c["std"], row["seeds"]),
                     f"{c['difference']:+.4g}", c["gap"],
                     "-" if c["spread"] is None else number(c["spread"]),
                     exceeds[c["exceeds_spread"]], c["verdict"]]
                )  # fmt: skip
        r.blocks.append(Table(head, body))
        lines = {line.split(":", 1)[0]: line for line in ablation_verdicts(rows)}
        items = []
        for model in dict.fromkeys(c["model"] for c in comparisons):
            mine = [c for c in comparisons if c["model"] == model]
            items.append(f"{lines.get(model, model)}. Verdict: {adapter_verdict(mine)}.")
        r.blocks.append(Items(items))
    if not found:
        r.blocks.append(
            Para(
                "Skipped: no adapter was run with its pretrained backbone beside one of the "
                "ablation modes (random_init, llm2attn, none) in the same protocol and dataset."
            )
        )


def _ablation_rows(report: _Report, group: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows :func:`~llm_st.bench.report.ablation_comparison` reads, one per method
    with a backbone mode (a backbone with no mode given is the pretrained one)."""
    out = []
    metric_scale = None
    for method, sub in group.groupby("method", sort=False):
        cell_ids = report.table[
            (report.table["method"] == method)
            & (report.table["protocol"] == sub["protocol"].iloc[0])
            & (report.table["dataset"] == sub["dataset"].iloc[0])
        ]["cell_id"].unique()
        facts = [report.facts[c] for c in cell_ids if c in report.facts]
        model = next((f.model for f in facts if f.model), None)
        mode = sub["backbone_mode"].dropna()
        if len(mode):
            mode = mode.iloc[0]
        else:  # a backbone without a mode given is the pretrained one
            mode = "pretrained" if any(f.backbone for f in facts) else None
        if model is None or mode is None:
            continue
        metric_scale = metric_scale or next((f.metric_scale for f in facts if f.metric_scale), None)
        by_metric = sub.set_index("metric")
        out.append(
            {
                "model": model,
                "mode": mode,
                "method": method,
                "metric_scale": metric_scale or "original",
                "test": {"avg": by_metric["mean"].to_dict()},
                "test_std": {"avg": by_metric["std"].to_dict()},
                "seeds": int(by_metric["seeds"].max()),
            }
        )
    metric = "mse" if out and out[0]["metric_scale"] == "normalized" else "mae"
    return [row for row in out if metric in row["test"]["avg"]]


# ------------------------------------------------------------------ figures
def _rank_metric(stats: pd.DataFrame) -> str:
    metrics = stats["metric"].unique()
    if not len(metrics):
        return "mae"
    return "mae" if "mae" in metrics else ("mse" if "mse" in metrics else metrics[0])


def figures_section(report: _Report, stats: pd.DataFrame) -> None:
    r, table = report, report.table
    figures = r.out / FIGURES
    r.blocks.append(Heading(2, "Figures"))
    scales = r.scales()
    protocols = set(table[table["status"] == "done"]["protocol"].dropna())
    metric = _rank_metric(stats)
    name = plots.METRIC_NAMES.get(metric, metric)

    r.blocks.append(Heading(3, "Error per forecast step"))
    drawn = plots.horizon_plot(table, figures / "horizon_steps.png", metric, scales)
    r.figure(
        "horizon_steps", drawn, f"{name} per forecast step",
        f"{name} at each reported forecast step, mean over seeds (error bars: one std), one "
        "line per method, one panel per dataset and protocol setting.",
        "no finished cell reports per-step metrics.",
    )  # fmt: skip

    r.blocks.append(Heading(3, "Accuracy vs cost"))
    cost_protocol = "full" if "full" in protocols else next(iter(_protocol_order(
        table[table["status"] == "done"], r.plan_raw)), None)  # fmt: skip
    drawn = None
    if cost_protocol is not None:
        drawn = plots.cost_plot(
            table, figures / "accuracy_vs_cost.png", metric, cost_protocol, scales
        )
    r.figure(
        "accuracy_vs_cost", drawn, "accuracy vs cost",
        f"Average {name} (mean over seeds, std error bars) against trainable parameters and "
        f"training time (log scales), one point per method, protocol {cost_protocol}.",
        "no finished cell.",
    )  # fmt: skip

    forecast_figures(r, stats, figures)

    r.blocks.append(Heading(3, "Few-shot curves"))
    drawn = plots.few_shot_plot(table, figures / "few_shot.png", metric, scales)
    r.figure(
        "few_shot", drawn, "few-shot curves",
        f"Average {name} against the fraction of training windows trained on (log x), one "
        "line per method; 100% is the full protocol where it ran.",
        "no finished cells of the few_shot protocol.",
    )  # fmt: skip

    r.blocks.append(Heading(3, "Imputation error vs missing rate"))
    imputed = table[(table["protocol"] == "imputation") & (table["status"] == "done")]
    imp_metric = "mae" if (imputed["metric"] == "mae").any() else metric
    imputers = {}
    for row in imputed.drop_duplicates("cell_id").itertuples():
        facts = r.facts.get(row.cell_id)
        kind = _read_json(facts.folder / "imputation" / "metrics.json").get("imputer") if (
            facts is not None) else None  # fmt: skip
        if kind and row.method not in imputers:
            imputers[row.method] = f"{row.method} ({kind} imputer)"
    drawn = plots.imputation_plot(
        table, figures / "imputation.png", imp_metric, scales, labels=imputers
    )
    r.figure(
        "imputation", drawn, "imputation error vs missing rate",
        f"{plots.METRIC_NAMES.get(imp_metric, imp_metric)} of the masked entries against the "
        "missing rate, one line per method (nudged apart along x so that equal curves stay "
        "visible; the legend names each method's imputer); cells of a mask without a rate "
        "(block) are in the table only.",
        "no finished cells of the imputation protocol.",
    )  # fmt: skip

    r.blocks.append(Heading(3, "Objective vs shift"))
    objectives = {}
    for method in table["method"].dropna().unique():
        ids = table[table["method"] == method]["cell_id"].unique()
        known = [r.facts[c].objective for c in ids if c in r.facts and r.facts[c].objective]
        if known:
            objectives[method] = known[0]
    drawn = plots.shift_plot(table, figures / "shift.png", objectives, metric, scales)
    r.figure(
        "shift", drawn, "objective vs shift",
        f"Average {name} per training objective (method) without drift and at each drift "
        "level (bars: mean over seeds, error bars: one std).",
        "no finished cells of the shift protocol.",
    )  # fmt: skip


def _example_cells(table: pd.DataFrame) -> tuple[str, Any, pd.DataFrame]:
    """The finished cells forecasts are drawn from: the full protocol's, else (a plan
    without it) the few-shot cells of the largest fraction, which have the same test
    windows. Returns the protocol, its parameter (None for full) and the rows."""
    done = table[table["status"] == "done"]
    full = done[done["protocol"] == "full"]
    few = done[done["protocol"] == "few_shot"]
    if full.empty and not few.empty:
        largest = max(few["protocol_param"].dropna().unique(), key=float)
        return "few_shot", largest, few[few["protocol_param"] == largest]
    return "full", None, full


def _best_methods(
    stats: pd.DataFrame, dataset: str, metric: str, protocol: str = "full", param: Any = None
) -> list[str]:
    rows = stats[
        (stats["protocol"] == protocol)
        & (True if param is None else stats["protocol_param"] == param)
        & (stats["dataset"] == dataset)
        & (stats["horizon_step"] == "avg")
        & (stats["metric"] == metric)
    ]
    ascending = not higher_is_better(metric)
    return rows.sort_values("mean", ascending=ascending, kind="stable")["method"].tolist()


def forecast_figures(report: _Report, stats: pd.DataFrame, figures: Path) -> None:
    """(3) forecast examples and (4) per-node error maps of the full protocol's datasets
    (of the few-shot cells where the plan has no full protocol, :func:`_example_cells`)."""
    r, table = report, report.table
    r.blocks.append(Heading(3, "Forecast examples"))
    protocol, param, done = _example_cells(table)
    datasets = list(dict.fromkeys(done["dataset"]))
    maps: list[tuple[str, Path | None, str, str]] = []
    if not r.predict:
        r.blocks.append(Para("Skipped: forecasts were not computed (predict=False)."))
    elif not datasets:
        r.blocks.append(Para("Skipped: no finished cells of the full or few_shot protocol."))
    elif protocol != "full":
        r.blocks.append(
            Para(
                f"From the {protocol} {param} cells (the plan has no full protocol; the "
                "test windows are the same)."
            )
        )
    metric = "mae" if (done["metric"] == "mae").any() else _rank_metric(stats)
    colors = plots.method_colors(table["method"].dropna().tolist())
    for dataset in datasets if r.predict else []:
        ranked = _best_methods(stats, dataset, metric, protocol, param)
        runs = {}
        for method in ranked:
            cells = done[(done["method"] == method) & (done["dataset"] == dataset)]
            cells = cells.sort_values("seed")["cell_id"].unique()
            runs[method] = r.facts[cells[0]] if len(cells) and cells[0] in r.facts else None
        ranked = [m for m in ranked if runs[m] is not None]
        # the best, and the best method that draws samples (its band shows), else the next
        sampling = [m for m in ranked[1:] if runs[m].probabilistic]
        chosen = ranked[:1] + (sampling[:1] or ranked[1:2])
        runs = {m: runs[m].folder for m in chosen}
        try:
            ex = _examples(r, dataset, runs)
        except Exception as exc:  # noqa: BLE001 - a report must not fail on one run
            logger.warning("report: forecasts of %s failed: %s", dataset, exc)
            r.blocks.append(Para(f"Skipped for {dataset}: {type(exc).__name__}: {exc}"))
            continue
        info = r.dataset(dataset)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", dataset)
        drawn = plots.forecast_examples_plot(
            ex["history"], ex["truth"], ex["forecasts"], figures / f"forecast_{slug}.png",
            ex["node_names"], ex["window_names"], ex["ylabel"],
            f"{dataset}: test-split forecasts of {chosen[0]} (best by average "
            f"{plots.METRIC_NAMES.get(metric, metric)})"
            + (f" and {chosen[1]}" if len(chosen) > 1 else "") + f", seed {ex['seed']}",
            ex["step_label"], colors,
        )  # fmt: skip
        r.figure(
            f"forecast_{slug}", drawn, f"forecast examples {dataset}",
            f"{dataset}: history and truth (black) with the point forecasts of {chosen[0]} "
            f"(best) and {chosen[1] if len(chosen) > 1 else 'no other method'} for the first "
            f"{len(ex['node_names'])} nodes and {len(ex['window_names'])} test windows; a "
            "shaded 10-90% band where the method draws samples (its median as the point).",
            "",
        )  # fmt: skip
        if ex.get("node_mae") is not None and ex.get("coords") is not None:
            unit = info.scale_text() or "metric scale"
            mname = plots.METRIC_NAMES.get("mae")
            drawn = plots.sensor_map_plot(
                ex["coords"], ex["node_mae"], figures / f"sensor_map_{slug}.png",
                f"{dataset}: {mname} per node of {chosen[0]} (best), "
                f"{ex['map_windows']} test windows",
                f"{mname} per node ({unit})", edges=ex["edges"], node_ids=ex["node_ids"],
                grid=ex["grid"],
            )  # fmt: skip
            caption = (
                f"{dataset}: each sensor at its coordinates, colored by the {mname} of "
                f"{chosen[0]} over {ex['map_windows']} test windows spread over the test split "
                "(all forecast steps); grey lines: the road graph."
            )
            maps.append((f"sensor_map_{slug}", drawn, caption, ""))
        else:
            maps.append(("", None, "", f"{dataset} has no node coordinates."))
    r.blocks.append(Heading(3, "Per-node error on the sensor map"))
    if not r.predict:
        r.blocks.append(Para("Skipped: forecasts were not computed (predict=False)."))
    elif not datasets:
        r.blocks.append(Para("Skipped: no finished cells of the full or few_shot protocol."))
    for key, drawn, caption, skip in maps:
        r.figure(key, drawn, key.replace("_", " "), caption, skip)


def _examples(report: _Report, dataset: str, runs: dict[str, Path | None]) -> dict[str, Any]:
    """Forecasts of the runs at common test cut-offs: the example arrays and, for the
    first (best) run, the MAE of each node over those cut-offs."""
    from llm_st.engine.run import build_task
    from llm_st.pipeline.forecast import ForecastPipeline

    loaded = {}
    for method, folder in runs.items():
        if folder is None:
            continue
        pipe = ForecastPipeline.from_run(folder, device=report.device)
        spec = pipe.recipe.data
        task = build_task(spec, report.data(spec.spec, spec.data_dir))
        loaded[method] = (pipe, task)
    if not loaded:
        raise FileNotFoundError("no run directory")
    common = None
    for pipe, task in loaded.values():
        cutoffs = set((task.index("test").starts + pipe.history - 1).tolist())
        common = cutoffs if common is None else common & cutoffs
    cutoffs = np.asarray(sorted(common or []), np.int64)
    if not len(cutoffs):
        raise ValueError("the runs share no test window")
    if report.max_windows is not None and len(cutoffs) > report.max_windows:
        pick = np.unique(np.linspace(0, len(cutoffs) - 1, report.max_windows).round())
        cutoffs = cutoffs[pick.astype(np.int64)]
    best = next(iter(loaded))
    pipe, task = loaded[best]
    data = task.data
    horizon = max(p.horizon for p, _ in loaded.values())
    shown = [0, len(cutoffs) // 2] if len(cutoffs) > 1 else [0]
    nodes = list(range(min(3, data.num_nodes)))
    length = min(max(p.history for p, _ in loaded.values()), max(3 * horizon, 24))
    truth_all = np.where(data.mask, data.values, np.nan)[..., 0]  # [T, N], channel 0
    history = np.stack(
        [truth_all[c - length + 1 : c + 1][:, nodes] if c - length + 1 >= 0 else
         np.pad(truth_all[: c + 1][:, nodes], ((length - c - 1, 0), (0, 0)),
                constant_values=np.nan) for c in cutoffs[shown]]
    )  # fmt: skip
    stop = np.minimum(cutoffs[shown, None] + 1 + np.arange(horizon), data.num_steps - 1)
    truth = truth_all[stop][:, :, nodes]
    forecasts, node_mae = [], None
    for method, (p, t) in loaded.items():
        draws = 50 if p.sampler is not None else 0
        fc = p.predict(data, at=cutoffs, num_samples=draws, progress=False)
        lower = upper = None
        if fc.quantiles is not None:
            levels = [round(q, 6) for q in fc.quantile_levels]
            if 0.1 in levels and 0.9 in levels:
                lower = _pad(fc.quantiles[levels.index(0.1)][shown][..., nodes, 0], horizon)
                upper = _pad(fc.quantiles[levels.index(0.9)][shown][..., nodes, 0], horizon)
        note = f" (median of {draws} samples)" if draws else ""
        point = _pad(fc.point[shown][..., nodes, 0], horizon)
        forecasts.append(plots.MethodForecast(method, point, lower, upper, note))
        if method == best:
            node_mae = node_errors(fc.point, data, cutoffs, t)
    stamps = data.timestamps
    names = [
        f"cut-off {stamps[c]:%Y-%m-%d %H:%M}" if stamps is not None else f"cut-off row {c}"
        for c in cutoffs[shown]
    ]
    info = report.dataset(dataset)
    channel = str(data.channels[0])
    unit = info.unit or "original units"
    freq = f" (1 step = {_freq_text(data.freq)})" if data.freq else ""
    edges = None
    if data.adjacency is not None:
        edges = (data.adjacency.src, data.adjacency.dst)
    return {
        "history": history,
        "truth": truth,
        "forecasts": forecasts,
        "node_names": [str(data.node_ids[n]) for n in nodes],
        "window_names": names,
        "ylabel": f"{channel} ({unit})",
        "step_label": f"steps from the cut-off{freq}",
        "seed": _seed_of(runs[best]),
        "node_mae": node_mae,
        "coords": data.coords,
        "edges": edges,
        "node_ids": [str(n) for n in data.node_ids],
        "grid": data.grid_shape is not None,
        "map_windows": len(cutoffs),
    }


def _pad(array: np.ndarray, horizon: int) -> np.ndarray:
    """``[W, H', N]`` padded with NaN to ``horizon`` steps."""
    missing = horizon - array.shape[1]
    if missing <= 0:
        return array
    return np.pad(array, ((0, 0), (0, missing), (0, 0)), constant_values=np.nan)


def _freq_text(freq: str) -> str:
    try:
        delta = pd.to_timedelta(pd.tseries.frequencies.to_offset(freq))
    except (ValueError, TypeError):
        return str(freq)
    minutes = delta.total_seconds() / 60
    if minutes < 60:
        return f"{minutes:g} min"
    if minutes < 1440:
        return f"{minutes / 60:g} h"
    return f"{minutes / 1440:g} d"


def _seed_of(folder: Path | None) -> Any:
    return None if folder is None else _read_json(folder / CELL_FILE).get("seed")


def node_errors(point: np.ndarray, data: Any, cutoffs: np.ndarray, task: Any) -> np.ndarray:
    """The MAE of each node ``[N]`` of forecasts ``point`` ``[W, H, N, C]`` made at
    ``cutoffs``, over the observed targets of all steps and channels, on the task's metric
    scale (normalized: after the task's scaler); NaN for a node with no observed target.
    Steps past the end of the data are left out."""
    H = point.shape[1]
    rows = cutoffs[:, None] + 1 + np.arange(H)
    inside = rows < data.num_steps
    rows = np.minimum(rows, data.num_steps - 1)
    truth, mask = data.values[rows], data.mask[rows] & inside[:, :, None, None]
    pred = np.asarray(point, np.float64)
    if task.metric_scale == "normalized":
        truth, pred = task.scaler.transform(truth), task.scaler.transform(pred)
    err = np.where(mask, np.abs(pred - truth), 0.0)
    total = mask.sum(axis=(0, 1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, err.sum(axis=(0, 1, 3)) / np.maximum(total, 1), np.nan)


def run_node_errors(
    run_dir: str | Path, max_windows: int | None = None, device: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-node MAE ``[N]`` of a run on (up to ``max_windows`` evenly spread) windows of
    its test split, and the number of observed targets per node ``[N]``; their
    count-weighted mean over all windows is the run's test MAE (``metrics.json``)."""
    from llm_st.engine.run import build_task
    from llm_st.pipeline.forecast import ForecastPipeline

    pipe = ForecastPipeline.from_run(run_dir, device=device)
    task = build_task(pipe.recipe.data)
    cutoffs = task.index("test").starts + pipe.history - 1
    if max_windows is not None and len(cutoffs) > max_windows:
        cutoffs = cutoffs[np.unique(np.linspace(0, len(cutoffs) - 1, max_windows).round())
                          .astype(np.int64)]  # fmt: skip
    fc = pipe.predict(task.data, at=cutoffs, progress=False)
    rows = np.minimum(cutoffs[:, None] + 1 + np.arange(pipe.horizon), task.data.num_steps - 1)
    counts = task.data.mask[rows].sum(axis=(0, 1, 3))
    return node_errors(fc.point, task.data, cutoffs, task), counts


# ------------------------------------------------------------------ other sections
def failures_section(report: _Report) -> None:
    r, table = report, report.table
    r.blocks.append(Heading(2, "Failed and unfinished cells"))
    bad = table[table["status"] != "done"].drop_duplicates("cell_id")
    planned = _planned_ids(r.plan_raw)
    missing = [] if planned is None else [c for c in planned if c not in set(table["cell_id"])]
    if bad.empty and not missing:
        r.blocks.append(Para("None: every cell of the table finished."))
    if not bad.empty:
        head = ["cell", "dataset", "protocol", "param", "method", "seed", "status", "error"]
        rows = []
        for row in bad.itertuples():
            kind = r.facts.get(row.cell_id)
            kind = kind.error_type if kind is not None else None
            fallback = "still running or interrupted" if row.status != "failed" else "(no message)"
            error = cell_text(row.error) or fallback
            rows.append(
                [row.cell_id, cell_text(row.dataset), cell_text(row.protocol),
                 cell_text(row.protocol_param), cell_text(row.method), cell_text(row.seed),
                 cell_text(row.status),
                 f"{kind}: {error}" if kind else error]
            )  # fmt: skip
        r.blocks.append(Table(head, rows))
    if missing:
        r.blocks.append(Para(f"{len(missing)} planned cell(s) have no directory (not run yet): "))
        r.blocks.append(Items(missing[:50] + ([f"... and {len(missing) - 50} more"]
                                              if len(missing) > 50 else [])))  # fmt: skip


def _planned_ids(plan_raw: dict[str, Any]) -> list[str] | None:
    if not plan_raw:
        return None
    try:
        from llm_st.bench.plan import Plan

        return [c.cell_id for c in Plan.from_dict(plan_raw).cells()]
    except Exception:  # noqa: BLE001 - a protocol unknown here, a moved recipe
        return None


def provenance_section(report: _Report) -> None:
    r = report
    r.blocks.append(Heading(2, "Plan"))
    if r.plan_text:
        r.blocks.append(Para(f"The plan as run ({PLAN_FILE} of the benchmark folder):"))
        r.blocks.append(Code(r.plan_text, "yaml"))
    else:
        r.blocks.append(Para(f"The benchmark folder has no {PLAN_FILE}."))
    r.blocks.append(Heading(2, "Software versions"))
    r.blocks.append(Table(["package", "version"], [[k, v] for k, v in software_versions().items()]))
    r.blocks.append(Heading(2, "Machine"))
    r.blocks.append(
        Para(
            "The machine this report was written on (llm_st.bench.machine.describe_machine); "
            "the cells record their own device in their recipe.yaml (training.device)."
        )
    )
    r.blocks.append(Table(["", "value"], [[k, str(v)] for k, v in describe_machine().items()]))


def _summary(report: _Report, title: str) -> None:
    r, table = report, report.table
    cells = table.drop_duplicates("cell_id")
    status = cells["status"].value_counts().to_dict()
    r.blocks.append(Heading(1, title))
    description = r.plan_raw.get("description")
    if description:
        r.blocks.append(Para(str(description)))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = ", ".join(f"{n} {s}" for s, n in status.items()) or "none"
    seeds = sorted({int(s) for s in cells["seed"].dropna()})
    r.blocks.append(
        Para(
            f"Written {now} by llm-st {software_versions()['llm-st']} from the benchmark folder "
            f"{r.bench.resolve()}: {len(cells)} cells ({parts}), "
            f"{cells['dataset'].nunique()} dataset(s), {cells['method'].nunique()} method(s), "
            f"{cells['protocol'].nunique()} protocol(s), seeds {seeds or '-'}."
        )
    )


def write_report(
    bench_dir: str | Path,
    out: str | Path | None = None,
    predict: bool = True,
    max_windows: int | None = 32,
    device: str | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the figures of a benchmark folder.

    Parameters
    ----------
    bench_dir
        The ``--out`` folder of ``llm-st bench`` (``results.parquet``, ``plan.yaml``,
        ``cells/``); without ``results.parquet`` the table is collected from the cells.
    out
        Where to write (default: ``bench_dir``); the PNGs go to ``out/figures/``.
    predict
        Load the best runs of the full protocol (:meth:`ForecastPipeline.from_run`) to draw
        forecast examples and per-node error maps; False skips both (no model is loaded).
    max_windows
        Test windows (spread evenly over the test split) forecast per run for those two
        figures; None: all.
    device
        Where those runs forecast (``"cpu"``, ``"cuda"``, None: the GPU when there is one).

    Returns
    -------
    dict
        ``"markdown"`` and ``"html"``: the two reports; then one entry per figure drawn
        (``horizon_steps``, ``accuracy_vs_cost``, ``forecast_<dataset>``,
        ``sensor_map_<dataset>``, ``few_shot``, ``imputation``, ``shift``): its PNG.
    """
    bench = Path(bench_dir)
    if not bench.is_dir():
        raise ConfigError(
            f"benchmark folder {str(bench)!r} does not exist",
            "pass the --out folder of llm-st bench",
        )
    out_dir = Path(out) if out is not None else bench
    out_dir.mkdir(parents=True, exist_ok=True)
    parquet = bench / "results.parquet"
    table = pd.read_parquet(parquet) if parquet.is_file() else collect_results(bench)
    plan_path = bench / PLAN_FILE
    plan_text = plan_path.read_text() if plan_path.is_file() else ""
    plan_raw = _read_yaml(plan_path) if plan_text else {}
    report = _Report(
        bench=bench,
        out=out_dir,
        table=table,
        plan_text=plan_text,
        plan_raw=plan_raw,
        facts=read_cell_facts(bench, table),
        predict=predict,
        max_windows=max_windows,
        device=device,
    )
    title = f"Benchmark report: {plan_raw.get('name') or bench.name}"
    stats = seed_stats(table)
    _summary(report, title)
    results_tables(report, stats)
    ablation_section(report, stats)
    figures_section(report, stats)
    failures_section(report)
    provenance_section(report)
    md = out_dir / REPORT_MD
    md.write_text(to_markdown(report.blocks))
    page = out_dir / REPORT_HTML
    page.write_text(to_html(report.blocks, title))
    return {"markdown": md, "html": page, **report.files}


__all__ = ["STAT_KEYS", "node_errors", "run_node_errors", "software_versions", "write_report"]
