"""The benchmark report (``llm-st report DIR``): report.md and report.html hold the mean and
std over seeds of the results table, the best of each column marked; Tan et al.'s verdict
follows the seed spread; every figure named is a real, non-blank PNG, embedded in the one
HTML file, which loads nothing from elsewhere; the plan, software versions and machine are
written down; failed cells are listed; the per-node errors of the sensor map reproduce the
run's test MAE; the protocol figures (few-shot, imputation, shift) are drawn from any
table that has their cells and skipped, with a word, where it has none.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml

from llm_st.bench import plots
from llm_st.bench.document import (
    REPORT_HTML,
    REPORT_MD,
    number,
    run_node_errors,
    software_versions,
    unit_of,
    write_report,
)
from llm_st.bench.plan import Plan
from llm_st.bench.published import published
from llm_st.bench.report import ablation_comparison, adapter_verdict
from llm_st.bench.runner import COLUMNS, run_plan
from llm_st.errors import ConfigError

SPEC = "synthetic-traffic:num_nodes=6,num_days=4,interval_minutes=60,seed=0"
BUDGET = {
    "training.max_steps": 3,
    "training.eval_every": 3,
    "training.patience": None,
    "training.batch_size": 8,
    "training.device": "cpu",
}
TINY_LM = ["model.backbone.source=tiny-gpt2", "model.backbone.num_layers=1"]
PLAN = {
    "name": "report-test",
    "description": "the report's test plan",
    "datasets": [
        {
            "name": "syn",
            "spec": SPEC,
            "recipes": "synthetic-traffic",
            "set": ["data.history=6", "data.horizon=3", "data.horizons=[1,2,3]"],
        }
    ],
    "methods": [
        "dlinear",
        {"name": "stid", "set": ["model.params.num_layers=1"]},
        {
            "name": "stid-diffusion",
            "recipe": "stid",
            "set": [
                "model.params.num_layers=1",
                "objective.name=diffusion",
                "objective.params={steps: 4, hidden: 16, layers: 1}",
            ],
        },
        {"name": "gpt4ts", "recipe": "gpt4ts", "set": TINY_LM, "backbone_mode": "pretrained"},
        {"name": "gpt4ts-none", "recipe": "gpt4ts", "set": TINY_LM, "backbone_mode": "none"},
        {"name": "broken", "recipe": "dlinear", "set": ["model.params.bogus=1"]},
    ],
    "protocols": [
        "full",
        {"name": "few_shot", "fraction": 0.5, "methods": ["dlinear", "stid"]},
    ],
    "seeds": [0, 1],
    "budget": BUDGET,
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A benchmark folder run from :data:`PLAN` and its report: (folder, table, files)."""
    out = tmp_path_factory.mktemp("bench")
    table = run_plan(Plan.from_dict(PLAN), out, progress=False)
    files = write_report(out, max_windows=8, device="cpu")
    return out, table, files


# ------------------------------------------------------------------ parsing the reports
def parse_markdown(text: str) -> list[dict]:
    """Every pipe table with the headings (levels 2-4) above it: heading, head, rows
    (cell texts without the bold marks) and bold (per cell)."""
    tables, heading, lines = [], {}, text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        match = re.match(r"(#{1,4}) (.*)", line)
        if match:
            level = len(match.group(1))
            heading = {k: v for k, v in heading.items() if k < level}
            heading[level] = match.group(2)
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split(" | ")])
                i += 1
            body = block[2:]
            tables.append(
                {
                    "heading": dict(heading),
                    "head": block[0],
                    "rows": [[c.strip("*") for c in r] for r in body],
                    "bold": [[c.startswith("**") and c.endswith("**") for c in r] for r in body],
                }
            )
            continue
        i += 1
    return tables


class HTMLTables(HTMLParser):
    """The tables of an HTML page with the headings above them, as parse_markdown."""

    def __init__(self):
        super().__init__()
        self.tables, self.heading, self.level = [], {}, None
        self.cell = self.row = self.table = None
        self.strong = False
        self.images = []

    def handle_starttag(self, tag, attrs):
        if re.fullmatch(r"h[1-4]", tag):
            self.level, self.text = int(tag[1]), ""
        elif tag == "table":
            self.table = {"heading": dict(self.heading), "head": [], "rows": [], "bold": []}
        elif tag == "tr":
            self.row, self.marks = [], []
        elif tag in ("td", "th"):
            self.cell, self.strong = "", False
        elif tag == "strong":
            self.strong = True
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        if self.level is not None and tag == f"h{self.level}":
            self.heading = {k: v for k, v in self.heading.items() if k < self.level}
            self.heading[self.level] = self.text
            self.level = None
        elif tag in ("td", "th"):
            self.row.append(self.cell)
            self.marks.append(self.strong)
            self.cell = None
        elif tag == "tr":
            if not self.table["head"]:
                self.table["head"] = self.row
            else:
                self.table["rows"].append(self.row)
                self.table["bold"].append(self.marks)
        elif tag == "table":
            self.tables.append(self.table)

    def handle_data(self, data):
        if self.level is not None:
            self.text += data
        if self.cell is not None:
            self.cell += data


def parse_html(text: str) -> HTMLTables:
    parser = HTMLTables()
    parser.feed(text)
    return parser


def mean_std(cell: str) -> tuple[float, float | None]:
    mean, _, std = cell.partition(" ± ")
    return float(mean), float(std) if std else None


def results_of(tables: list[dict]) -> list[dict]:
    return [t for t in tables if t["heading"].get(2) == "Results"]


def expected_stats(table: pd.DataFrame) -> pd.DataFrame:
    done = table[(table.status == "done") & (table.horizon_step == "avg")]
    done = done.assign(protocol_param=done.protocol_param.fillna(""))
    keys = ["protocol", "protocol_param", "dataset", "method", "metric"]
    return done.groupby(keys)["value"].agg(["mean", "std", "count"])


# ------------------------------------------------------------------ the tables
@pytest.mark.parametrize("kind", ["md", "html"])
def test_tables_hold_mean_and_std_over_seeds_with_the_best_marked(bench, kind):
    out, table, files = bench
    text = files["markdown" if kind == "md" else "html"].read_text()
    tables = results_of(parse_markdown(text) if kind == "md" else parse_html(text).tables)
    stats = expected_stats(table)
    heads = {"MAE": "mae", "MSE": "mse", "RMSE": "rmse", "MAPE (%)": "mape"}
    seen = set()
    for t in tables:
        protocol = t["heading"][3].removeprefix("Protocol ")
        param = t["heading"].get(4, "").partition(": ")[2]
        metric_cols = {i: heads[h] for i, h in enumerate(t["head"]) if h in heads}
        assert set(metric_cols.values()) == {"mae", "mse", "rmse", "mape"}
        col = {h: i for i, h in enumerate(t["head"])}
        truth = {}  # metric -> method -> mean
        for row, marks in zip(t["rows"], t["bold"], strict=True):
            method = row[col["method"]]
            assert row[col["dataset"]] == "syn"
            assert row[col["metric scale"]] == "original (mph)"
            for i, metric in metric_cols.items():
                expected = stats.loc[(protocol, param, "syn", method, metric)]
                mean, std = mean_std(row[i])
                factor = 100.0 if metric == "mape" else 1.0
                assert mean == pytest.approx(factor * expected["mean"], rel=6e-4)
                assert std == pytest.approx(factor * expected["std"], rel=6e-4, abs=1e-9)
                assert row[col["seeds"]] == str(int(expected["count"])) == "2"
                truth.setdefault(metric, {})[method] = (expected["mean"], marks[i])
            seen.add((protocol, param, method))
        for metric, by_method in truth.items():
            best = min(v for v, _ in by_method.values())
            marked = {m for m, (_, bold) in by_method.items() if bold}
            assert marked == {m for m, (v, _) in by_method.items() if v == best}, metric
            assert len(marked) == 1
    done = table[table.status == "done"].drop_duplicates("cell_id")
    assert seen == {(p, _text(q), m) for p, q, m in zip(done.protocol, done.protocol_param,
                                                         done.method, strict=True)}  # fmt: skip
    assert "broken" not in {m for _, _, m in seen}


def _text(value) -> str:
    return "" if pd.isna(value) else str(value)


def test_the_ablation_verdict_follows_the_seed_spread(bench):
    out, table, files = bench
    tables = parse_markdown(files["markdown"].read_text())
    ablation = [t for t in tables if t["heading"].get(2) == "Backbone ablations (Tan et al.)"]
    assert len(ablation) == 1 and ablation[0]["heading"][3] == "syn, protocol full"
    rows = {r[1]: dict(zip(ablation[0]["head"], r, strict=True)) for r in ablation[0]["rows"]}
    assert set(rows) == {"pretrained", "none"}
    done = table[(table.status == "done") & (table.horizon_step == "avg") & (table.metric == "mae")]
    done = done[done.protocol == "full"]
    pre = done[done.method == "gpt4ts"].value
    none = done[done.method == "gpt4ts-none"].value
    diff, spread = none.mean() - pre.mean(), none.std() + pre.std()
    row = rows["none"]
    assert float(row["difference to pretrained (MAE)"]) == pytest.approx(diff, rel=6e-4)
    assert float(row["seed spread"]) == pytest.approx(spread, rel=6e-4)
    assert row["change"] == f"{100 * (none.mean() / pre.mean() - 1):+.1f}%"
    assert row["exceeds spread"] == ("yes" if abs(diff) > spread else "no")
    # the verdict of report.py's logic, reached from the same numbers
    entries = ablation_comparison(
        [
            {"model": "gpt4ts", "mode": mode, "metric_scale": "original", "seeds": 2,
             "test": {"avg": {"mae": v.mean()}}, "test_std": {"avg": {"mae": v.std()}}}
            for mode, v in (("pretrained", pre), ("none", none))
        ]
    )  # fmt: skip
    assert row["verdict"] == entries[0]["verdict"]
    assert f"Verdict: {adapter_verdict(entries)}." in files["markdown"].read_text()


def test_ablation_comparison_says_when_a_difference_exceeds_the_spread():
    def row(mode, mean, std, seeds=3):
        return {"model": "m", "mode": mode, "metric_scale": "normalized", "seeds": seeds,
                "test": {"avg": {"mse": mean}}, "test_std": {"avg": {"mse": std}}}  # fmt: skip

    base = row("pretrained", 1.0, 0.1)
    out = ablation_comparison([base, row("none", 0.7, 0.1), row("llm2attn", 1.15, 0.1)])
    assert [(c["mode"], c["exceeds_spread"]) for c in out] == [("none", True), ("llm2attn", False)]
    assert out[0]["difference"] == pytest.approx(-0.3) and out[0]["spread"] == pytest.approx(0.2)
    assert out[0]["gap"] == "-30.0%" and out[0]["verdict"] == "none better beyond the seed spread"
    assert "does not help" in adapter_verdict(out)
    worse = ablation_comparison([base, row("none", 1.5, 0.1), row("random_init", 1.3, 0.05)])
    assert adapter_verdict(worse).startswith("the pretrained backbone helps")
    single = ablation_comparison([row("pretrained", 1, 0, 1), row("none", 2, 0, 1)])
    assert single[0]["exceeds_spread"] is None and "undecided" in adapter_verdict(single)


# ------------------------------------------------------------------ the figures
def test_every_figure_is_a_readable_png_embedded_in_the_html(bench):
    out, _, files = bench
    md = files["markdown"].read_text()
    named = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    pngs = {k: v for k, v in files.items() if k not in ("markdown", "html")}
    assert sorted(named) == sorted(p.relative_to(out).as_posix() for p in pngs.values())
    assert sorted(named) == sorted(p.relative_to(out).as_posix()
                                   for p in (out / "figures").glob("*.png"))  # fmt: skip
    assert set(pngs) == {
        "horizon_steps", "accuracy_vs_cost", "forecast_syn", "sensor_map_syn", "few_shot"
    }  # fmt: skip
    page = files["html"].read_text()
    images = parse_html(page).images
    embedded = {i["data-file"]: i["src"] for i in images}
    assert sorted(embedded) == sorted(named)
    for rel in named:
        path = out / rel
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 15_000
        pixels = matplotlib.image.imread(path)
        assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
        assert pixels.shape[0] >= 300 and pixels.shape[1] >= 500
        assert pixels[..., :3].std() > 0.05  # not blank
        assert (pixels[..., :3] < 0.5).mean() > 0.005  # dark ink: lines, text
        prefix = "data:image/png;base64,"
        assert embedded[rel].startswith(prefix)
        assert base64.b64decode(embedded[rel][len(prefix) :]) == path.read_bytes()


def test_the_html_is_one_file(bench):
    page = bench[2]["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for external in ('src="http', "src='http", 'href="http', "<link", "<script", "url(", "@import"):
        assert external not in page
    assert re.findall(r'src="([^"]*)"', page) and all(
        s.startswith("data:image/png;base64,") for s in re.findall(r'src="([^"]*)"', page)
    )
    assert "<style>" in page


def test_skipped_figures_say_why(bench):
    md = bench[2]["markdown"].read_text()
    assert "Skipped: no finished cells of the imputation protocol." in md
    assert "Skipped: no finished cells of the shift protocol." in md


def test_the_sensor_map_errors_reproduce_the_runs_test_mae(bench):
    out, table, _ = bench
    cell = table[(table.method == "stid") & (table.protocol == "full") & (table.seed == 0)]
    run = out / cell.run_dir.iloc[0]
    errors, counts = run_node_errors(run, device="cpu")
    assert errors.shape == counts.shape == (6,) and np.isfinite(errors).all()
    mae = json.loads((run / "metrics.json").read_text())["test"]["avg"]["mae"]
    assert np.sum(errors * counts) / counts.sum() == pytest.approx(mae, rel=1e-5)


# ------------------------------------------------------------------ what produced it
def test_plan_versions_machine_and_failures_are_written(bench):
    out, table, files = bench
    md = files["markdown"].read_text()
    plan_text = (out / "plan.yaml").read_text()
    intro = "## Plan\n\nThe plan as run (plan.yaml of the benchmark folder):"
    assert f"{intro}\n\n```yaml\n{plan_text}```" in md  # verbatim
    tables = parse_markdown(md)
    versions = next(t for t in tables if t["heading"].get(2) == "Software versions")
    found = dict(versions["rows"])
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets"):
        assert found[name] == importlib.metadata.version(name)
    assert found["llm-st"] == importlib.metadata.version("llm-st")
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", found["python"])
    machine = dict(next(t for t in tables if t["heading"].get(2) == "Machine")["rows"])
    assert {"os", "cpu", "cores", "memory", "gpu", "torch threads"} <= set(machine)
    failed = next(t for t in tables if t["heading"].get(2) == "Failed and unfinished cells")
    broken = table[table.method == "broken"].cell_id.tolist()
    assert sorted(r[0] for r in failed["rows"]) == sorted(broken)
    for row in failed["rows"]:
        assert row[6] == "failed" and row[7].startswith("ConfigError: ") and "bogus" in row[7]
    html_tables = parse_html(files["html"].read_text()).tables
    assert [t["rows"] for t in html_tables if t["heading"].get(2) == "Software versions"] == [
        versions["rows"]
    ]
    assert "plan.yaml" in files["html"].read_text() and yaml.safe_load(plan_text)["name"] in md


# ------------------------------------------------------------------ other protocols
def fake_bench(folder: Path) -> pd.DataFrame:
    """A results table of the shift, imputation and anomaly protocols (no run directories),
    as their cells would leave it, and its plan."""
    rng = np.random.default_rng(0)
    rows = []

    def add(protocol, param, method, seed, steps, metrics):
        cid = f"{protocol}-{param}-{method}-s{seed}"
        base = dict(dataset="traffic", protocol=protocol, protocol_param=param, method=method,
                    backbone_mode=None, seed=seed, horizon=12, trainable_params=1000,
                    total_params=1000, train_time_s=10.0 + seed, peak_memory_mb=1.0,
                    tokens_processed=None, status="done", cell_id=cid, run_dir=f"cells/{cid}",
                    error=None)  # fmt: skip
        for step in steps:
            for m, v in metrics.items():
                value = v * (1 + 0.05 * rng.standard_normal())
                rows.append({**base, "horizon_step": step, "metric": m, "value": value})

    for seed in (0, 1, 2):
        for method, mae in (("stid", 3.0), ("gwnet", 2.9)):
            add("full", None, method, seed, ["h3", "h12", "avg"], {"mae": mae, "rmse": 2 * mae})
            for drift in (0, 0.5):
                add("shift", f"drift={drift:g}", method, seed, ["avg"], {"mae": mae + drift})
            for rate in (0.125, 0.25, 0.5):
                add("imputation", f"{rate:g}", method, seed, ["avg"],
                    {"mae": mae * rate, "mse": mae, "count": 100.0})  # fmt: skip
            kind = "forecast" if method == "stid" else "reconstruction"  # one per method
            add("anomaly", kind, method, seed, ["avg"],
                {"precision": 0.5 + 0.2 * (method == "gwnet"), "recall": 0.5, "f1": 0.5,
                 "auc": 0.8})  # fmt: skip
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for name in ("seed", "horizon", "trainable_params", "total_params", "tokens_processed"):
        table[name] = table[name].astype("Int64")
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / "results.parquet", index=False)
    plan = {"name": "fake", "datasets": ["traffic"], "methods": ["stid", "gwnet"],
            "protocols": ["full", "shift", "imputation", "anomaly", "long_horizon"]}  # fmt: skip
    (folder / "plan.yaml").write_text(yaml.safe_dump(plan))
    return table


def test_protocol_figures_and_detection_tables_from_any_table(tmp_path):
    table = fake_bench(tmp_path)
    files = write_report(tmp_path, predict=False)
    assert {"imputation", "shift", "horizon_steps", "accuracy_vs_cost"} <= set(files)
    assert "few_shot" not in files
    md = files["markdown"].read_text()
    assert "Skipped: no finished cells of the few_shot protocol." in md
    assert "### Protocol long_horizon\n\nNo results: no cells." in md
    tables = results_of(parse_markdown(md))
    anomaly = [t for t in tables if t["heading"][3] == "Protocol anomaly"]
    assert len(anomaly) == 1  # the score kind is the methods' own: one table, a column
    anomaly = anomaly[0]
    assert anomaly["head"][2:7] == ["protocol param", "precision", "recall", "F1", "AUC"]
    assert "metric scale" not in anomaly["head"]  # scores without units
    assert [r[2] for r in anomaly["rows"]] == ["forecast", "reconstruction"]
    precision = {r[1]: (mean_std(r[3])[0], b[3]) for r, b in zip(anomaly["rows"], anomaly["bold"],
                                                                 strict=True)}  # fmt: skip
    truth = table[table.metric == "precision"].groupby("method").value.mean()
    for method, (mean, _) in precision.items():
        assert mean == pytest.approx(truth[method], rel=6e-4)
    best = max(precision, key=lambda m: precision[m][0])
    assert best == "gwnet" and [m for m, (_, bold) in precision.items() if bold] == [best]
    imputation = [t for t in tables if t["heading"][3] == "Protocol imputation"]
    assert [t["heading"][4] for t in imputation] == [f"imputation: {r}" for r in
                                                      ("0.125", "0.25", "0.5")]  # fmt: skip
    assert all(t["head"][2:4] == ["MAE", "MSE"] for t in imputation)  # not the count
    for name in ("imputation", "shift"):
        pixels = matplotlib.image.imread(files[name])
        assert pixels.shape[0] >= 300 and pixels[..., :3].std() > 0.05
    # the plot functions on their own: None where the protocol has no cells
    full = table[table.protocol == "full"]
    assert plots.shift_plot(full, tmp_path / "x.png") is None
    assert plots.imputation_plot(full, tmp_path / "x.png") is None
    assert plots.few_shot_plot(full, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_labels_and_numbers():
    assert plots.param_value("drift=0.5") == 0.5 and plots.param_value("0.125") == 0.125
    assert plots.param_value("mask_rate=0.25,seed=3") == 0.25
    assert plots.param_value("block") is None and plots.param_value(None) is None
    assert plots.step_number("h12") == 12 and plots.step_number("avg") is None
    assert plots.metric_label("mae", "original units: mph") == "MAE (original units: mph)"
    assert plots.metric_label("mse", "original units: mph") == "MSE (original units: mph²)"
    assert plots.metric_label("mae", "normalized") == "MAE (normalized)"
    assert plots.metric_label("mape", "normalized") == "MAPE (%)"
    assert plots.metric_label("f1", "original units: mph") == "F1 (0-1)"
    assert unit_of("speeds (mph) of 207 sensors") == "mph"
    assert unit_of("channels flow (vehicles per 5 minutes), occupancy") == "vehicles per 5 minutes"
    assert unit_of("Electricity Transformer Temperature") is None
    assert [number(v) for v in (6.35531, 0.048213, 103.52, 12345.6, 0, float("nan"))] == [
        "6.355", "0.04821", "103.5", "12346", "0", "-"
    ]  # fmt: skip
    assert set(software_versions()) >= {"python", "torch", "llm-st"}
    assert REPORT_MD == "report.md" and REPORT_HTML == "report.html"


def test_an_empty_or_missing_folder(tmp_path):
    files = write_report(tmp_path)
    md = files["markdown"].read_text()
    assert "No results: the folder holds no cells." in md
    assert set(files) == {"markdown", "html"} and "Skipped: no finished cell." in md
    with pytest.raises(ConfigError, match="does not exist"):
        write_report(tmp_path / "nothing")


def test_published_figures_stand_beside_the_rows_they_were_measured_for(tmp_path):
    rows = []
    fit = "ETTh1->ETTh2 (scaler fit on target)"
    settings = [("few_shot", fraction, "ETTh1") for fraction in ("0.1", "0.05")]
    settings += [("zero_shot_transfer", p, "ETTh1->ETTh2") for p in (fit, "ETTh1->ETTh2")]
    configs = [
        (protocol, param, dataset, method, mse)
        for protocol, param, dataset in settings
        for method, mse in (("dlinear", 0.6), ("patchtst", 0.5), ("gpt4ts-none", 0.7))
    ]
    for protocol, param, dataset, method, mse in configs:
        for seed in (0, 1):
            cid = f"{protocol}-{param}-{method}-s{seed}"
            for metric, value in (("mse", mse + 0.01 * seed), ("mae", mse / 2)):
                rows.append(dict(
                    dataset=dataset, protocol=protocol, protocol_param=param, method=method,
                    backbone_mode=None, seed=seed, horizon=96, horizon_step="avg",
                    metric=metric, value=value, trainable_params=10, total_params=10,
                    train_time_s=1.0, peak_memory_mb=1.0, tokens_processed=None,
                    status="done", cell_id=cid, run_dir=f"cells/{cid}", error=None,
                ))  # fmt: skip
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for name in ("seed", "horizon", "trainable_params", "total_params", "tokens_processed"):
        table[name] = table[name].astype("Int64")
    table.to_parquet(tmp_path / "results.parquet", index=False)
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump({"name": "pub", "datasets": ["ETTh1"]}))
    md = write_report(tmp_path, predict=False)["markdown"].read_text()
    tables = {t["heading"].get(4, t["heading"][3]): t for t in results_of(parse_markdown(md))}
    column = {}
    for name, t in tables.items():
        assert t["head"][-1] == "published MSE / MAE" or name.endswith("ETTh1->ETTh2")
        for row in t["rows"]:
            column[(name, row[1])] = row[-1]
    # One Fits All's 10 % few-shot table (DLinear 0.492 / 0.495), its 5 % (PatchTST)
    assert column[("few_shot: 0.1", "dlinear")] == "0.492 / 0.495"
    assert column[("few_shot: 0.1", "gpt4ts-none")] == "-"  # an ablation: nothing published
    assert column[("few_shot: 0.05", "patchtst")] == "0.557 / 0.519"
    # Time-LLM's zero-shot table, only where the scaler is the target's (the papers' scale)
    assert column[(f"zero_shot_transfer: {fit}", "patchtst")] == "0.304 / 0.350"
    assert "published MSE / MAE" not in tables["zero_shot_transfer: ETTh1->ETTh2"]["head"]
    assert "patchtst: One Fits All, few-shot table." in md
    assert published("long_horizon", "ETTh1", "gpt4ts", 96).mse == 0.376  # full's figure
    assert published("long_horizon", "ETTh1", "gpt4ts", 192) is None


def test_the_report_command_writes_the_report_of_a_folder(tmp_path, capsys):
    from llm_st.cli import main

    table = fake_bench(tmp_path)
    assert main(["report", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"report: {tmp_path / 'report.md'}, {tmp_path / 'report.html'}")
    md = (tmp_path / "report.md").read_text()
    anomaly = next(
        t for t in results_of(parse_markdown(md)) if t["heading"][3] == "Protocol anomaly"
    )
    stid = next(r for r in anomaly["rows"] if r[1] == "stid")
    truth = table[(table.method == "stid") & (table.metric == "f1")].value.mean()
    assert mean_std(stid[5])[0] == pytest.approx(truth, rel=6e-4)
    assert main(["report", str(tmp_path / "nothing-here")]) == 2  # one line, status 2
    assert capsys.readouterr().err.startswith("llm-st: error: ")


def test_forecasts_come_from_the_few_shot_cells_where_a_plan_has_no_full_protocol(bench, tmp_path):
    folder, table, _ = bench
    copy = tmp_path / "few-only"
    shutil.copytree(folder, copy)
    (copy / "results.parquet").unlink()
    for cell_id in table[table.protocol != "few_shot"].cell_id.unique():
        shutil.rmtree(copy / "cells" / cell_id)
    files = write_report(copy, max_windows=8, device="cpu")
    md = files["markdown"].read_text()
    (param,) = table[table.protocol == "few_shot"].protocol_param.unique()
    assert f"From the few_shot {param} cells (the plan has no full protocol" in md
    drawn = [name for name in files if name.startswith("forecast_")]
    assert drawn and all(files[name].is_file() for name in drawn)
    pixels = matplotlib.image.imread(files[drawn[0]])
    assert pixels[..., :3].std() > 0.05
