"""Benchmark protocols beyond forecasting: distribution shift, imputation, anomaly detection.

Registered with :func:`~llm_st.bench.plan.register_protocol` (``llm_st.bench.plan``
imports this module, so a plan may always name them). Every cell is an engine run
(:func:`~llm_st.engine.train` of the cell's recipe into its directory); the protocol then
scores the trained run its own way and writes the ``test`` block the runner reads into
``<protocol>/metrics.json`` (:attr:`~llm_st.bench.plan.Protocol.metrics_file`), with the
facts of the setting beside it.

``shift`` (``drift``: a number or a list, default ``[0.0, 0.5]``; ``drift_start``,
default: the spec's; ``val_fraction``, default 0.125; ``num_samples``, default 16)
    Synthetic data (``synthetic-traffic`` or ``synthetic-grid``) generated with the
    ``drift`` knob: from row ``onset = floor(drift_start * T) + 1`` on, the pattern drifts
    (ramping in over one day). Train and validation rows end before it, the test rows are
    the rows from it to the end: borders ``[onset - n_val, n_val, T - onset]`` with
    ``n_val = max(1, round(val_fraction * onset))`` (:func:`shift_borders`), the same for
    every drift, so the cells of one method and seed differ only in the test rows (the
    generator leaves the rows before ``drift_start`` unchanged). ``protocol_param``:
    ``drift=0.5``. The training objective is the method's (name the methods e.g.
    ``patchtst+masked``: ``objective.pretrain`` masked, then regression). A run trained
    with a probabilistic objective (``diffusion``) is scored on the median of
    ``num_samples`` samples (and its CRPS); others as the engine tested them.
``imputation`` (``rate``: a list of mask rates, default ``[0.125, 0.25, 0.375, 0.5]``;
``block``: also the sensor-block mask, default true; ``block_nodes``: share of sensors
hidden, default 0.25; ``block_length``: rows, default half the window; ``window``: rows,
default the recipe's history (set: ``data.history``); ``imputer``: how each method
imputes; ``match_rate``: methods trained at the cell's rate)
    The test rows cut into consecutive windows of ``window`` rows; observed entries hidden
    at random at the rate (each independently), or, in ``block`` cells, ``block_nodes`` of
    the sensors of every window for ``block_length`` consecutive rows; the mask is drawn
    from the cell's seed and the setting only, so every method of a seed imputes the same
    entries. MAE / MSE on the hidden entries only (``llm_st.evaluation.imputation``).
    ``imputer`` is a kind for every method or a mapping method -> kind: ``linear``
    (interpolation along time, from the visible entries of each sensor's window; a
    sensor with none gets its training mean), ``historical_average`` (the run's
    historical-average model: the training profile at the slot of the week),
    ``masked`` (the run's masked-modelling objective rebuilds the window from its
    visible entries; needs ``style: patchtst``); by default a recipe with the masked
    objective imputes ``masked``, the ``historical_average`` model ``historical_average``,
    others must be named. ``match_rate`` (true: every masked-objective method, or a list
    of methods) sets the objective's ``mask_ratio`` to the cell's rate (in block cells:
    the block mask's expected share of hidden entries). ``protocol_param``: the rate, or
    ``block``.
``anomaly`` (``score``: ``forecast`` or ``reconstruction`` for every method, or a
mapping method -> kind; default: ``reconstruction`` for a masked-objective recipe,
else ``forecast``; ``num_samples``: 16, for probabilistic runs)
    ``synthetic-traffic`` data, whose generator records its incidents: window-sensors of
    the test windows (every forecasting window, at every sensor) labelled anomalous where
    an incident lies at the sensor in their target rows, scored by the run's forecast
    error of the target rows, or by their masked-reconstruction error (every row hidden
    once, in blocks of a quarter of the history, and rebuilt from the window around it);
    the threshold is the best-F1 one on the validation windows
    (``llm_st.evaluation.anomaly``). Test block: ``precision``, ``recall``, ``f1``,
    ``auc``.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_st.bench.plan import Cell, PlanProtocol, Protocol, register_protocol, train_cell
from llm_st.config import Recipe
from llm_st.data import load as load_data
from llm_st.data.container import STData
from llm_st.engine.rundir import atomic_write_json
from llm_st.errors import ConfigError

DRIFT_GENERATORS = ("synthetic-traffic", "synthetic-grid")
IMPUTERS = ("linear", "historical_average", "masked")
ANOMALY_SCORES = ("forecast", "reconstruction")


# ------------------------------------------------------------------ helpers
def spec_with(spec: str, **params: Any) -> str:
    """A synthetic spec with ``params`` set (replacing the spec's own):
    ``spec_with("synthetic-traffic:seed=1", drift=0.5)`` ->
    ``"synthetic-traffic:seed=1,drift=0.5"``."""
    name, _, text = spec.partition(":")
    items = [i.strip() for i in text.split(",") if i.strip()]
    kept = [i for i in items if i.partition("=")[0].strip() not in params]
    kept += [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()]
    return f"{name.strip()}:{','.join(kept)}" if kept else name.strip()


def drift_onset(num_steps: int, drift_start: float) -> int:
    """The first row the drift of a synthetic series reaches: the generators ramp the drift
    in from 0 at step ``drift_start * T``, so rows ``<= drift_start * T`` are drift-free."""
    return int(math.floor(drift_start * num_steps)) + 1


def shift_borders(num_steps: int, drift_start: float, val_fraction: float) -> list[int]:
    """``[n_train, n_val, n_test]`` of the shift protocol: training and validation rows
    before the drift's onset (:func:`drift_onset`), the validation part their last
    ``max(1, round(val_fraction * onset))`` rows, the test part every row from it on."""
    onset = drift_onset(num_steps, drift_start)
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction={val_fraction} is not in (0, 1)", "use e.g. 0.125")
    if onset >= num_steps:
        raise ConfigError(
            f"drift_start={drift_start} leaves no row after the drift's onset",
            "use an earlier drift_start, e.g. 0.7",
        )
    n_val = max(1, round(val_fraction * onset))
    return [onset - n_val, n_val, num_steps - onset]


def _generator(spec: str) -> str:
    return spec.partition(":")[0].strip().lower()


def _numbers(value: Any, where: str, low: float, high: float, closed: bool = True) -> list[float]:
    values = value if isinstance(value, list) else [value]
    for v in values:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        ok = ok and (low <= v <= high if closed else low < v < high)
        if not ok:
            raise ConfigError(
                f"{where}={v!r} is not a number in {'[' if closed else '('}{low}, {high}"
                f"{']' if closed else ')'}",
                f"write e.g. {where}: [{high / 4:g}, {high / 2:g}]",
            )
    if not values:
        raise ConfigError(f"{where} is empty", f"give {where} at least one value")
    return [float(v) for v in values]


def _per_method(value: Any, where: str, choices: tuple[str, ...]) -> Any:
    """A kind for every method (a string), a mapping method -> kind, or None (auto)."""
    if value is None:
        return None
    kinds = value.values() if isinstance(value, dict) else [value]
    if not isinstance(value, (str, dict)) or any(k not in choices for k in kinds):
        raise ConfigError(
            f"{where}={value!r} names no valid kind",
            f"use one of {', '.join(choices)}, or a mapping method: kind",
        )
    return value


def _kind_for(value: Any, method: str) -> str | None:
    if isinstance(value, dict):
        return value.get(method)
    return value


def _reset(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    return folder


def _write(folder: Path, content: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "metrics.json", content)


def _load_run(cell_dir: Path, recipe: Recipe) -> Any:
    from llm_st.pipeline.forecast import ForecastPipeline

    return ForecastPipeline.from_run(cell_dir, device=recipe.training.device)


def _run_objective(pipeline: Any, cell_dir: Path) -> Any:
    """The run's (main) objective with its trained weights, on the pipeline's device."""
    from llm_st.engine.checkpoint import load_weights
    from llm_st.objectives import build_objective

    recipe = pipeline.recipe
    objective = build_objective(
        recipe.objective.name, pipeline.info, pipeline.model, **recipe.objective.params
    )
    path = cell_dir / "objective.safetensors"
    if any(True for _ in objective.state_dict()):
        if not path.is_file():
            raise ConfigError(
                f"{cell_dir} has no objective.safetensors of its {recipe.objective.name} objective",
                "re-run the cell (objective weights are written at the end of training)",
            )
        objective.load_state_dict(load_weights(path))
    return objective.to(pipeline.device).eval()


def _task(recipe: Recipe) -> Any:
    from llm_st.engine import build_task

    return build_task(recipe.data)


class _DataCache:
    """Synthetic data by spec, generated once per protocol instance (plan expansion and
    recipe resolution read the number of rows and nodes)."""

    def __init__(self) -> None:
        self.items: dict[str, STData] = {}

    def __call__(self, spec: str) -> STData:
        if spec not in self.items:
            self.items[spec] = load_data(spec)
        return self.items[spec]


# ------------------------------------------------------------------ shift
@register_protocol
class Shift(Protocol):
    """Train before a synthetic drift sets in, test after it (module docstring)."""

    name = "shift"
    params = {"drift": [0.0, 0.5], "drift_start": None, "val_fraction": 0.125, "num_samples": 16}
    metrics_file = "shift/metrics.json"

    def __init__(self, plan: Any):
        super().__init__(plan)
        self.data = _DataCache()

    def settings(self, entry: PlanProtocol) -> list[tuple[str, dict[str, Any], int | None]]:
        p = {**self.params, **entry.params}
        drifts = _numbers(p["drift"], "shift drift", 0.0, 1.0)
        base: dict[str, Any] = {
            "val_fraction": _numbers(p["val_fraction"], "val_fraction", 0, 1, False)[0],
            "num_samples": int(_numbers(p["num_samples"], "num_samples", 1, 1e6)[0]),
        }
        if p["drift_start"] is not None:
            base["drift_start"] = _numbers(p["drift_start"], "drift_start", 0, 1, False)[0]
        out = []
        for dataset in self.plan.dataset_names(entry):
            spec = self.plan.dataset(dataset).spec
            if _generator(spec) not in DRIFT_GENERATORS:
                raise ConfigError(
                    f"protocol shift needs synthetic data with a drift knob; dataset "
                    f"{dataset!r} is {spec!r}",
                    f"restrict the entry to datasets of {', '.join(DRIFT_GENERATORS)} "
                    "(datasets: [...])",
                )
            out += [(dataset, {"drift": d, **base}, None) for d in drifts]
        return out

    @classmethod
    def slug(cls, params: dict[str, Any]) -> str:
        return f"drift{params['drift']:g}"

    def param_label(self, cell: Cell, recipe: Recipe) -> str | None:
        return f"drift={cell.protocol_params['drift']:g}"

    def spec(self, cell: Cell) -> str:
        """The cell's data spec: the dataset's with the cell's drift (and drift_start)."""
        p = cell.protocol_params
        extra = {"drift": float(p["drift"])}
        if "drift_start" in p:
            extra["drift_start"] = float(p["drift_start"])
        return spec_with(self.plan.dataset(cell.dataset).spec, **extra)

    def facts(self, cell: Cell) -> dict[str, Any]:
        """``drift``, ``drift_start``, ``num_steps``, ``onset`` and ``borders`` of the cell."""
        data = self.data(self.spec(cell))
        start = float(data.extras["synthetic"]["drift_start"])
        borders = shift_borders(data.num_steps, start, cell.protocol_params["val_fraction"])
        return {
            "drift": float(data.extras["synthetic"]["drift"]),
            "drift_start": start,
            "num_steps": data.num_steps,
            "onset": drift_onset(data.num_steps, start),
            "borders": borders,
        }

    def overrides(self, cell: Cell) -> list[str]:
        facts = self.facts(cell)
        return [
            f"data.spec={json.dumps(self.spec(cell))}",
            "data.ratios=null",
            f"data.borders={json.dumps(facts['borders'])}",
        ]

    def run(self, cell: Cell, cell_dir: Path, resume: bool = False) -> None:
        from llm_st.evaluation.sampling import evaluate_samples
        from llm_st.objectives import get_objective_class

        out = _reset(cell_dir / "shift")
        recipe = self.recipe(cell)
        train_cell(recipe, cell_dir, resume)
        run = json.loads((cell_dir / "metrics.json").read_text())
        task = _task(recipe)
        facts = self.facts(cell)
        content: dict[str, Any] = {
            **facts,
            "split": task.split.to_dict(),
            "objective": recipe.objective.name,
            "pretrain": None
            if recipe.objective.pretrain is None
            else recipe.objective.pretrain.name,
        }
        if get_objective_class(recipe.objective.name).probabilistic:
            pipeline = _load_run(cell_dir, recipe)
            torch.manual_seed(cell.seed)
            result = evaluate_samples(
                pipeline.model,
                pipeline.sampler,
                task,
                "test",
                cell.protocol_params["num_samples"],
                recipe.training.eval_batch_size,
                pipeline.device,
                recipe.data.report_horizons(),
            )
            content.update(
                test=result["metrics"],
                crps=result["crps"],
                point="median of samples",
                num_samples=result["num_samples"],
                num_test_windows=result["num_windows"],
            )
        else:
            content.update(
                test=run["test"], point="model", num_test_windows=run["num_test_windows"]
            )
        _write(out, content)


# ------------------------------------------------------------------ imputation
@register_protocol
class Imputation(Protocol):
    """Hide entries of the test windows, impute them, score the hidden ones (module
    docstring)."""

    name = "imputation"
    params = {
        "rate": [0.125, 0.25, 0.375, 0.5],
        "block": True,
        "block_nodes": 0.25,
        "block_length": None,
        "window": None,
        "imputer": None,
        "match_rate": False,
    }
    metrics_file = "imputation/metrics.json"

    def __init__(self, plan: Any):
        super().__init__(plan)
        self.data = _DataCache()

    def settings(self, entry: PlanProtocol) -> list[tuple[str, dict[str, Any], int | None]]:
        p = {**self.params, **entry.params}
        rates = [] if p["rate"] in (None, []) else _numbers(p["rate"], "rate", 0, 1, False)
        if not isinstance(p["block"], bool):
            raise ConfigError(f"block={p['block']!r} is not true or false", "use true or false")
        common: dict[str, Any] = {}
        if p["window"] is not None:
            common["window"] = int(_numbers(p["window"], "window", 2, 1e9)[0])
        imputer = _per_method(p["imputer"], "imputer", IMPUTERS)
        if imputer is not None:
            common["imputer"] = imputer
        match = p["match_rate"]
        if not isinstance(match, bool):
            match = [self.plan.method(m).name for m in _strings_of(match, "match_rate")]
        if match:
            common["match_rate"] = match
        settings = [{"mask": r, **common} for r in rates]
        if p["block"]:
            block = {
                "mask": "block",
                "block_nodes": _numbers(p["block_nodes"], "block_nodes", 0, 1)[0],
            }
            if p["block_length"] is not None:
                block["block_length"] = int(_numbers(p["block_length"], "block_length", 1, 1e9)[0])
            settings.append({**block, **common})
        if not settings:
            raise ConfigError("protocol imputation has no mask", "give rate: [...] or block: true")
        return [(d, s, None) for d in self.plan.dataset_names(entry) for s in settings]

    @classmethod
    def slug(cls, params: dict[str, Any]) -> str:
        mask = params["mask"]
        return mask if isinstance(mask, str) else f"{mask:g}"

    def param_label(self, cell: Cell, recipe: Recipe) -> str | None:
        return self.slug(cell.protocol_params)

    # ---- the cell's mask and training
    def window(self, cell: Cell, recipe: Recipe | None = None) -> int:
        p = cell.protocol_params
        if "window" in p:
            return int(p["window"])
        return (recipe or self.plan.recipe(cell)).data.history

    def block_length(self, cell: Cell, window: int) -> int:
        return int(cell.protocol_params.get("block_length") or max(1, window // 2))

    def train_rate(self, cell: Cell, base: Recipe) -> float:
        """The mask rate a ``match_rate`` method trains at: the cell's rate, or the block
        mask's expected share of hidden entries."""
        p = cell.protocol_params
        if p["mask"] != "block":
            return float(p["mask"])
        nodes = self.data(base.data.spec).num_nodes
        window = self.window(cell, base)
        hidden_nodes = max(1, round(p["block_nodes"] * nodes))
        return hidden_nodes / nodes * self.block_length(cell, window) / window

    def matched(self, cell: Cell, base: Recipe) -> bool:
        match = cell.protocol_params.get("match_rate", False)
        if match is True:
            return base.objective.name == "masked"
        return bool(match) and cell.method in match

    def overrides(self, cell: Cell) -> list[str]:
        items = []
        if "window" in cell.protocol_params:
            items.append(f"data.history={int(cell.protocol_params['window'])}")
        base = self.plan.recipe(cell, items)
        if self.matched(cell, base):
            if base.objective.name != "masked":
                raise ConfigError(
                    f"match_rate names {cell.method!r}, whose objective is "
                    f"{base.objective.name!r}, not masked",
                    "list only methods trained with the masked objective",
                )
            rate = min(max(self.train_rate(cell, base), 1e-3), 0.999)
            items.append(f"objective.params.mask_ratio={rate}")
        return items

    def imputer_kind(self, cell: Cell, recipe: Recipe) -> str:
        kind = _kind_for(cell.protocol_params.get("imputer"), cell.method)
        if kind is None:
            if recipe.objective.name == "masked":
                kind = "masked"
            elif recipe.model.name == "historical_average":
                kind = "historical_average"
            else:
                raise ConfigError(
                    f"protocol imputation does not know how method {cell.method!r} "
                    f"({recipe.model.name}, objective {recipe.objective.name}) imputes",
                    f"name it in the entry's imputer: {{{cell.method}: linear}} (kinds: "
                    f"{', '.join(IMPUTERS)})",
                )
        if kind == "masked" and recipe.objective.name != "masked":
            raise ConfigError(
                f"method {cell.method!r} imputes 'masked' but trains {recipe.objective.name!r}",
                "train it with objective: {name: masked, params: {style: patchtst}}",
            )
        if kind == "masked" and recipe.objective.params.get("style", "step") != "patchtst":
            raise ConfigError(
                f"method {cell.method!r}: masked imputation needs the objective's style "
                "patchtst (the step style encodes a fixed number of visible patches)",
                "set objective.params.style=patchtst",
            )
        if kind == "historical_average" and recipe.model.name != "historical_average":
            raise ConfigError(
                f"method {cell.method!r} imputes 'historical_average' but its model is "
                f"{recipe.model.name!r}",
                "use the historical_average recipe",
            )
        return kind

    def recipe(self, cell: Cell) -> Recipe:
        recipe = super().recipe(cell)
        self.imputer_kind(cell, recipe)  # a method that cannot impute fails before any run
        return recipe

    def mask(self, cell: Cell, task: Any, starts: np.ndarray, window: int) -> np.ndarray:
        """The cell's hidden entries ``[W, window, N, C]``: drawn from the seed and the
        setting only (the same for every method of a seed)."""
        from llm_st.evaluation.imputation import block_mask, random_mask, window_rows

        p = cell.protocol_params
        label = self.slug(p) + ("" if p["mask"] != "block" else f"-{p['block_nodes']:g}")
        rng = np.random.default_rng([cell.seed, zlib.crc32(label.encode())])
        observed = task.data.mask[window_rows(starts, window)]
        if p["mask"] == "block":
            return block_mask(observed, p["block_nodes"], self.block_length(cell, window), rng)
        return random_mask(observed, float(p["mask"]), rng)

    def run(self, cell: Cell, cell_dir: Path, resume: bool = False) -> None:
        from llm_st.evaluation import imputation as imp

        out = _reset(cell_dir / "imputation")
        recipe = self.recipe(cell)
        kind = self.imputer_kind(cell, recipe)
        train_cell(recipe, cell_dir, resume)
        task = _task(recipe)
        window = self.window(cell, recipe)
        starts = imp.tile_windows(task.split.test, window)
        hidden = self.mask(cell, task, starts, window)
        if kind == "linear":
            imputer: Any = imp.LinearInterpolation(imp.training_means(task))
        else:
            pipeline = _load_run(cell_dir, recipe)
            if kind == "historical_average":
                imputer = imp.ProfileImputer(pipeline.model)
            else:
                objective = _run_objective(pipeline, cell_dir)
                imputer = imp.ReconstructionImputer(pipeline.model, objective, pipeline.device)
        result = imp.evaluate_imputation(
            imputer, task, starts, window, hidden, recipe.training.eval_batch_size
        )
        p = cell.protocol_params
        content = {
            "test": result["metrics"],
            "imputer": kind,
            "mask": p["mask"],
            "window": window,
            "windows_rows": [int(starts.min()), int(starts.max()) + window],
            **{k: v for k, v in result.items() if k != "metrics"},
        }
        if p["mask"] == "block":
            content.update(
                block_nodes=p["block_nodes"], block_length=self.block_length(cell, window)
            )
        if recipe.objective.name == "masked":
            content["train_mask_ratio"] = recipe.objective.params.get("mask_ratio", 0.75)
            content["train_unit"] = recipe.objective.params.get("unit", "patch")
        _write(out, content)


def _strings_of(value: Any, where: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{where}={value!r} is not a list of method names", "e.g. [gpt4ts-imp]")
    return values


# ------------------------------------------------------------------ anomaly
@register_protocol
class Anomaly(Protocol):
    """Detect the generator's incidents by forecast or reconstruction errors (module
    docstring)."""

    name = "anomaly"
    params = {"score": None, "num_samples": 16}
    metrics_file = "anomaly/metrics.json"

    def settings(self, entry: PlanProtocol) -> list[tuple[str, dict[str, Any], int | None]]:
        p = {**self.params, **entry.params}
        params: dict[str, Any] = {
            "num_samples": int(_numbers(p["num_samples"], "num_samples", 1, 1e6)[0])
        }
        score = _per_method(p["score"], "score", ANOMALY_SCORES)
        if score is not None:
            params["score"] = score
        out = []
        for dataset in self.plan.dataset_names(entry):
            spec = self.plan.dataset(dataset).spec
            if _generator(spec) != "synthetic-traffic":
                raise ConfigError(
                    f"protocol anomaly needs data whose anomalies are known; dataset "
                    f"{dataset!r} is {spec!r}",
                    "restrict the entry to synthetic-traffic datasets (datasets: [...])",
                )
            out.append((dataset, params, None))
        return out

    @classmethod
    def slug(cls, params: dict[str, Any]) -> str:
        return ""

    def param_label(self, cell: Cell, recipe: Recipe) -> str | None:
        return self.score_kind(cell, recipe)

    def score_kind(self, cell: Cell, recipe: Recipe) -> str:
        kind = _kind_for(cell.protocol_params.get("score"), cell.method)
        if kind is None:
            kind = "reconstruction" if recipe.objective.name == "masked" else "forecast"
        if kind == "reconstruction" and (
            recipe.objective.name != "masked"
            or recipe.objective.params.get("style", "step") != "patchtst"
        ):
            raise ConfigError(
                f"method {cell.method!r} scores by reconstruction but is not trained with the "
                "masked objective in the patchtst style",
                "train it with objective: {name: masked, params: {style: patchtst}}",
            )
        return kind

    def recipe(self, cell: Cell) -> Recipe:
        recipe = super().recipe(cell)
        self.score_kind(cell, recipe)
        return recipe

    def run(self, cell: Cell, cell_dir: Path, resume: bool = False) -> None:
        from llm_st.data.synthetic import incident_labels
        from llm_st.evaluation import anomaly as an
        from llm_st.evaluation.sampling import sample_median

        out = _reset(cell_dir / "anomaly")
        recipe = self.recipe(cell)
        kind = self.score_kind(cell, recipe)
        train_cell(recipe, cell_dir, resume)
        task = _task(recipe)
        pipeline = _load_run(cell_dir, recipe)
        model, device = pipeline.model.eval(), pipeline.device
        size = recipe.training.eval_batch_size
        rows = incident_labels(task.data)
        torch.manual_seed(cell.seed)
        if kind == "reconstruction":
            objective = _run_objective(pipeline, cell_dir)

            def scores_of(part: str) -> np.ndarray:
                rows = task.split[part]
                errors = an.reconstruction_errors(
                    lambda b: objective.reconstruct(model, b), task, rows, None, size, device
                )
                starts = task.index(part).starts
                return an.window_scores(errors, rows[0], starts, task.history, task.horizon)
        else:
            sampler, k = pipeline.sampler, cell.protocol_params["num_samples"]

            def forecast(batch: dict[str, torch.Tensor]) -> torch.Tensor:
                if sampler is not None:
                    return sample_median(model, sampler, batch, k)[0]
                return model(batch)

            def scores_of(part: str) -> np.ndarray:
                return an.forecast_error_scores(forecast, task.dataset(part), size, device)

        def labels_of(part: str) -> np.ndarray:
            return an.window_labels(rows, task.index(part).starts, task.history, task.horizon)

        train_labels = labels_of("train")
        chosen = an.choose_threshold(scores_of("val"), labels_of("val"), float(train_labels.mean()))
        scores, labels = scores_of("test"), labels_of("test")
        metrics = an.detection_metrics(scores, labels, chosen["threshold"])
        scored = ~np.isnan(scores)
        threshold = chosen["threshold"]
        _write(
            out,
            {
                "test": {"avg": metrics},
                "score": kind,
                **chosen,
                "threshold": threshold if np.isfinite(threshold) else None,
                "num_test_windows": int(scores.shape[0]),
                "num_scored": int(scored.sum()),
                "num_anomalous": int(labels[scored].sum()),
                "anomaly_rate": float(labels[scored].mean()) if scored.any() else None,
                "train_anomaly_rate": float(train_labels.mean()),
                "labels": "incidents of the generator at their own sensor, in target rows",
            },
        )


__all__ = [
    "Anomaly",
    "Imputation",
    "Shift",
    "drift_onset",
    "shift_borders",
    "spec_with",
]
