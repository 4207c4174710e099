"""Benchmark plans: the datasets, methods, protocols and seeds one benchmark runs.

A plan is one YAML file (the shipped ones are ``alignment/benchmarks/*.yaml``); ``llm-st
bench PLAN.yaml --out DIR`` runs it with :func:`llm_st.bench.runner.run_plan`. It
expands (:meth:`Plan.cells`) to a deterministic list of :class:`Cell`: one per dataset x
protocol setting x method x seed (x horizon for ``long_horizon``). Every cell is one run
of :func:`llm_st.engine.train` into ``DIR/cells/<cell_id>/``, scored by the one scorer.

The format (every key is checked; unknown keys are errors that name the valid ones)::

    name: ett-few-shot               # required
    description: ...                 # optional free text
    datasets:                        # data specs: a string, or a mapping
      - ETTh1                        # = {spec: ETTh1}
      - name: synthetic-b            # label in cell ids and results (default: the spec's name)
        spec: "synthetic-traffic:num_nodes=8,seed=1"
        recipes: synthetic-traffic   # folder of its shipped recipes (default: the spec's name)
        set: [data.history=6]        # overrides of every recipe run on this dataset
    methods:                         # a registry name, or a mapping
      - dlinear                      # = {name: dlinear, recipe: dlinear}
      - name: gpt4ts-none            # label (default: the recipe's method)
        recipe: alignment/gpt4ts/ETTh1/config.yaml
        set: [model.backbone.num_layers=2]
        backbone_mode: none          # pretrained | random_init | llm2attn | none
        seeds: [0]                   # instead of the plan's seeds
    protocols:                       # a name, or a mapping of the name and its parameters
      - full
      - {name: few_shot, fraction: [0.05, 0.1], datasets: [ETTh1]}
      - {name: zero_shot_transfer, pairs: [[ETTh1, ETTh2], [ETTh2, ETTh1]]}
      - {name: long_horizon, history: 336, methods: [dlinear]}
    horizons: [96, 192, 336, 720]    # of long_horizon (or its own `horizons`)
    seeds: [0, 1, 2]                 # default [0]
    budget:                          # overrides of every recipe, to keep a plan small
      training.max_steps: 200

A method's ``recipe`` is

- a registry name: the shipped recipe ``alignment/<name>/<dataset>/config.yaml``, where
  ``<dataset>`` is the dataset's ``recipes`` folder;
- a path, where ``{dataset}`` stands for that folder and ``{method}`` for the method's
  name; relative paths are looked up next to the plan file, then (``alignment/...``) in
  the shipped recipes (:func:`~llm_st.config.recipes_root`), then in the working
  directory;
- a recipe mapping written inline (``data.spec`` may be left out).

The recipe of a cell is the method's recipe with these overrides, in this order:
``data.spec`` (the dataset's spec), the dataset's ``set``, the plan's ``budget``, the
method's ``set``, ``model.backbone.mode`` (``backbone_mode``), the protocol's own (e.g.
``data.train_fraction``), and ``training.seed``. Every protocol entry may restrict itself
to some ``datasets`` and ``methods`` (by name).

Protocols (:data:`PROTOCOLS`):

- ``full``: the recipe as it is, the dataset's standard protocol (``docs/protocol.md``).
- ``few_shot`` (``fraction``: a number or a list, e.g. 0.05 and 0.1): trains on the first
  fraction of the training windows (``data.train_fraction``; the Time-LLM / GPT4TS
  few-shot tables), same validation and test as ``full``; the scaler is the full
  setting's, fit on the whole training split as the papers' loaders do
  (``data.scaler_fit: trained`` fits it on the rows trained on; see
  :func:`llm_st.data.task.prepare_task`).
- ``zero_shot_transfer`` (``source`` and ``target``, or ``pairs``; ``fit_scaler``, default
  false): trains on the source with the full protocol, then scores the trained run on the
  target's test windows without training; the inputs are scaled with the run's own scaler,
  so nothing of the target's training split is read (``fit_scaler: true`` fits the scaler
  on the target's training rows, as the papers' code does). Reported as dataset ``A->B``.
- ``long_horizon`` (``history``, optional; ``horizons``, default: the plan's): the recipe
  at every horizon (``data.horizon``), e.g. ETT's 96 / 192 / 336 / 720.
- ``shift``, ``imputation``, ``anomaly``: beyond forecasting, in
  :mod:`llm_st.bench.protocols` (imported at the end of this module, so always
  registered): training before a synthetic drift and testing after it; hidden entries of
  the test windows imputed and scored; the synthetic generator's incidents detected by
  forecast or reconstruction errors.

Adding a protocol: subclass :class:`Protocol`, give it a ``name``, its ``params`` (name ->
default, :data:`REQUIRED` for a required one) and what differs from ``full``: usually
:meth:`Protocol.overrides` (recipe changes); :meth:`Protocol.settings` when one entry
makes several cells (a list of fractions, pairs); :meth:`Protocol.run` and
``metrics_file`` when a cell does more than :func:`~llm_st.engine.train` (the transfer
protocol scores a second ``metrics.json``); :meth:`Protocol.param_label` /
:meth:`Protocol.dataset_label` for the results table. Then decorate it with
:func:`register_protocol`. A protocol used with ``workers > 1`` must live in an
importable module (the worker processes import it).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from llm_st.backbones.ablations import BACKBONE_MODES
from llm_st.bench.recipes import recipe_path
from llm_st.config import Recipe, read_yaml_file, recipe_from_dict, recipes_root
from llm_st.data import load as load_data
from llm_st.engine import train
from llm_st.engine.checkpoint import CheckpointManager
from llm_st.engine.rundir import atomic_write_json
from llm_st.errors import ConfigError

REQUIRED: Any = object()
"""Default of a protocol parameter that a plan must give."""

PLAN_KEYS = ("name", "description", "datasets", "methods", "protocols", "horizons", "seeds")
PLAN_KEYS += ("budget",)


# ------------------------------------------------------------------ small checks
def _check_keys(raw: Any, allowed: Iterable[str], where: str) -> dict[str, Any]:
    """``raw`` as a mapping with only ``allowed`` keys (else a ConfigError naming them)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}", "write it as key: value lines")
    allowed = list(allowed)
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown key {key!r} in {where}", f"{hint}valid keys: {', '.join(allowed)}"
            )
    return raw


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}={value!r} is not a name", f"give {where} a non-empty string")
    return value.strip()


def _strings(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}={value!r} is not a list", f"give {where} a list of names")
    return [_string(v, f"{where}[{i}]") for i, v in enumerate(value)]


def _ints(value: Any, where: str, minimum: int = 0) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value
    )
    if not ok or not value:
        raise ConfigError(
            f"{where}={value!r} is not a list of whole numbers >= {minimum}",
            f"write e.g. {where}: [{minimum}, {minimum + 1}]",
        )
    return [int(v) for v in value]


def _overrides(value: Any, where: str) -> list[str]:
    """``set`` items: a list of ``section.key=value`` strings, or a mapping of them."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={json.dumps(v)}" for k, v in value.items()]
    items = _strings(value, where)
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"{where} item {item!r} is not section.key=value", "write e.g. training.lr=3e-4"
            )
    return items


def _budget(value: Any, where: str) -> Any:
    """The budget as a mapping ``section.key -> value`` (a list of ``k=v`` items parsed)."""
    if value is None:
        return {}
    if isinstance(value, list):
        items = _overrides(value, where)
        return {k.strip(): yaml.safe_load(v) for k, _, v in (i.partition("=") for i in items)}
    return dict(value) if isinstance(value, dict) else value


def _spec_name(spec: str) -> str:
    """``ETTh1`` -> ``ETTh1``; ``synthetic-traffic:num_nodes=8`` -> ``synthetic-traffic``;
    a file path -> its stem."""
    text = spec.strip()
    if "/" in text or Path(text).suffix:
        return Path(text).stem
    return text.split(":")[0].strip()


# ------------------------------------------------------------------ plan sections
@dataclass
class PlanDataset:
    """One dataset of a plan: its spec, its label, its recipe folder and overrides."""

    spec: str
    name: str
    recipes: str
    set: list[str] = field(default_factory=list)

    @classmethod
    def from_raw(cls, raw: Any, where: str) -> PlanDataset:
        if isinstance(raw, str):
            raw = {"spec": raw}
        raw = _check_keys(raw, ("spec", "name", "recipes", "set"), where)
        if "spec" not in raw:
            raise ConfigError(f"{where} has no spec", "give the data spec, e.g. spec: ETTh1")
        spec = _string(raw["spec"], f"{where}.spec")
        base = _spec_name(spec)
        return cls(
            spec=spec,
            name=_string(raw.get("name") or base, f"{where}.name"),
            recipes=_string(raw.get("recipes") or base, f"{where}.recipes"),
            set=_overrides(raw.get("set"), f"{where}.set"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec, "recipes": self.recipes, "set": self.set}


@dataclass
class PlanMethod:
    """One method of a plan: its label, its recipe (name, path or mapping) and overrides."""

    name: str
    recipe: str | dict[str, Any]
    set: list[str] = field(default_factory=list)
    backbone_mode: str | None = None
    seeds: list[int] | None = None

    @classmethod
    def from_raw(cls, raw: Any, where: str) -> PlanMethod:
        if isinstance(raw, str):
            raw = {"name": raw}
        raw = _check_keys(raw, ("name", "recipe", "set", "backbone_mode", "seeds"), where)
        recipe = raw.get("recipe")
        if recipe is None and "name" not in raw:
            raise ConfigError(f"{where} has neither name nor recipe", "give e.g. name: dlinear")
        if isinstance(recipe, dict):
            name = raw.get("name") or (recipe.get("model") or {}).get("name")
        else:
            recipe = _string(recipe if recipe is not None else raw["name"], f"{where}.recipe")
            name = raw.get("name") or recipe
        mode = raw.get("backbone_mode")
        if mode is not None and mode not in BACKBONE_MODES:
            raise ConfigError(
                f"{where}.backbone_mode={mode!r} is not a backbone mode",
                f"use one of {', '.join(BACKBONE_MODES)}",
            )
        seeds = raw.get("seeds")
        return cls(
            name=_string(name, f"{where}.name"),
            recipe=copy.deepcopy(recipe),
            set=_overrides(raw.get("set"), f"{where}.set"),
            backbone_mode=mode,
            seeds=None if seeds is None else _ints(seeds, f"{where}.seeds"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "recipe": copy.deepcopy(self.recipe),
            "set": self.set,
            "backbone_mode": self.backbone_mode,
            "seeds": self.seeds,
        }


@dataclass
class PlanProtocol:
    """One protocol entry: the protocol's name, its parameters, and the datasets and
    methods it is restricted to (None: all)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    datasets: list[str] | None = None
    methods: list[str] | None = None

    @classmethod
    def from_raw(cls, raw: Any, where: str) -> PlanProtocol:
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict) or "name" not in raw:
            raise ConfigError(
                f"{where}={raw!r} does not name a protocol",
                f"write e.g. {{name: few_shot, fraction: 0.1}}; protocols: {', '.join(PROTOCOLS)}",
            )
        name = _string(raw["name"], f"{where}.name")
        cls_ = protocol_class(name)
        allowed = ["name", "datasets", "methods", *cls_.params]
        raw = _check_keys(raw, allowed, f"{where} ({name})")
        missing = [k for k, v in cls_.params.items() if v is REQUIRED and k not in raw]
        if missing:
            raise ConfigError(
                f"{where} ({name}) lacks parameter(s) {missing}", f"add {', '.join(missing)}"
            )
        params = {k: copy.deepcopy(v) for k, v in raw.items() if k in cls_.params}
        datasets, methods = raw.get("datasets"), raw.get("methods")
        return cls(
            name=name,
            params=params,
            datasets=None if datasets is None else _strings(datasets, f"{where}.datasets"),
            methods=None if methods is None else _strings(methods, f"{where}.methods"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **copy.deepcopy(self.params),
            "datasets": self.datasets,
            "methods": self.methods,
        }


# ------------------------------------------------------------------ cells
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-")


@dataclass
class Cell:
    """One run of a plan: a dataset (its label), a protocol with its parameters, a method
    (its label), a seed and, for ``long_horizon``, a horizon (None: the recipe's)."""

    dataset: str
    protocol: str
    protocol_params: dict[str, Any]
    method: str
    seed: int
    horizon: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "protocol_params": copy.deepcopy(self.protocol_params),
            "method": self.method,
            "seed": self.seed,
            "horizon": self.horizon,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Cell:
        return cls(**raw)

    @property
    def cell_id(self) -> str:
        """Its directory name: a readable slug and 8 hex digits of a hash of the cell
        (stable across processes and Python versions), e.g.
        ``ETTh1_few_shot-0.05_dlinear_s0-1a2b3c4d``."""
        cls = PROTOCOLS.get(self.protocol, Protocol)
        param = cls.slug(self.protocol_params)
        parts = [
            self.dataset,
            self.protocol + (f"-{param}" if param else ""),
            self.method,
            f"s{self.seed}",
        ]
        if self.horizon is not None:
            parts.append(f"h{self.horizon}")
        slug = "_".join(_slug(p) for p in parts)[:100]
        digest = hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()
        return f"{slug}-{digest[:8]}"


# ------------------------------------------------------------------ protocols
def _has_checkpoint(run_dir: Path) -> bool:
    return any(
        CheckpointManager(run_dir / sub / "checkpoints").latest() is not None
        for sub in (".", "pretrain")
    )


def train_cell(recipe: Recipe, cell_dir: Path, resume: bool = False) -> dict[str, Any]:
    """:func:`llm_st.engine.train` of ``recipe`` into ``cell_dir``: with ``resume``, from
    the run's latest checkpoint where it has one, else from scratch (a partial run of an
    earlier try is replaced)."""
    keep = resume and _has_checkpoint(cell_dir)
    return train(recipe, cell_dir, resume=keep, overwrite=not keep)


class Protocol:
    """How a cell of a protocol becomes a recipe, a run and a score (``full``: as it is).

    An instance serves one :class:`Plan`. See the module docstring for how to add one.
    """

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    """Parameters a plan entry may give: name -> default (:data:`REQUIRED`: must be given)."""
    metrics_file: ClassVar[str] = "metrics.json"
    """The file (relative to the cell's directory) whose ``test`` block scores the cell."""

    def __init__(self, plan: Plan):
        self.plan = plan

    # ---- expansion
    def settings(self, entry: PlanProtocol) -> list[tuple[str, dict[str, Any], int | None]]:
        """``(dataset, params, horizon)`` of the cells of ``entry`` (then x methods x seeds)."""
        params = {k: v for k, v in self.params.items() if v is not REQUIRED}
        params.update(entry.params)
        return [(d, params, None) for d in self.plan.dataset_names(entry)]

    @classmethod
    def slug(cls, params: dict[str, Any]) -> str:
        """The parameters' part of a cell id."""
        return "-".join(str(v) for _, v in sorted(params.items()) if v not in (None, False))

    # ---- labels of the results table
    def dataset_label(self, cell: Cell) -> str:
        return cell.dataset

    def param_label(self, cell: Cell, recipe: Recipe) -> str | None:
        """The ``protocol_param`` column (e.g. the fraction, ``A->B``); None: none."""
        items = [f"{k}={v}" for k, v in sorted(cell.protocol_params.items()) if v is not None]
        return ",".join(items) or None

    # ---- running
    def overrides(self, cell: Cell) -> list[str]:
        """Recipe overrides of this protocol (after the plan's, before the seed)."""
        return []

    def recipe(self, cell: Cell) -> Recipe:
        """The recipe the cell trains (see the module docstring for the overrides' order)."""
        return self.plan.recipe(cell, self.overrides(cell))

    def run(self, cell: Cell, cell_dir: Path, resume: bool = False) -> None:
        """Run the cell into ``cell_dir`` (the engine's run directory)."""
        train_cell(self.recipe(cell), cell_dir, resume)

    def score(self, cell: Cell, cell_dir: Path) -> dict[str, Any]:
        """The cell's test metrics ``{"avg": {mae, mse, rmse, mape}, "h3": ...}``, the
        ``test`` block of :attr:`metrics_file`."""
        return json.loads((cell_dir / self.metrics_file).read_text())["test"]


PROTOCOLS: dict[str, type[Protocol]] = {}
"""The protocols a plan may name: name -> :class:`Protocol` subclass."""


def register_protocol(cls: type[Protocol]) -> type[Protocol]:
    """Class decorator adding ``cls`` to :data:`PROTOCOLS` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"protocol {cls.__name__} has no name")
    PROTOCOLS[cls.name] = cls
    return cls


def protocol_class(name: str) -> type[Protocol]:
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}", f"use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


@register_protocol
class Full(Protocol):
    """The recipe as it is: the dataset's standard protocol."""

    name = "full"


@register_protocol
class FewShot(Protocol):
    """Training on the first ``fraction`` of the training windows (``data.train_fraction``,
    see :func:`llm_st.data.splits.train_fraction_split`), the full protocol's validation and
    test; the scaler as ``data.scaler_fit`` says (default: the full setting's)."""

    name = "few_shot"
    params = {"fraction": REQUIRED}

    def settings(self, entry: PlanProtocol) -> list[tuple[str, dict[str, Any], int | None]]:
        raw = entry.params["fraction"]
        fractions = raw if isinstance(raw, list) else [raw]
        for f in fractions:
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
                raise ConfigError(
                    f"few_shot fraction {f!r} is not a fraction in (0, 1]",
                    "use e.g. fraction: [0.05, 0.1]",
                )
        return [
            (d, {"fraction": float(f)}, None)
            for f in fractions
            for d in self.plan.dataset_names(entry)
        ]

    @classmethod
    def slug(cls, params: dict[str, Any]) -> str:
        return f"{params['fraction']:g}"

    def param_label(self, cell: Cell, recipe: Recipe) -> str | None:
        return f"{cell.protocol_params['fraction']:g}"

    def overrides(self, cell: Cell) -> list[str]:
        return [f"data.train_fraction={cell.protocol_params['fraction']}"]


@register_protocol
class LongHorizon(Protocol):
    """The recipe at every horizon of ``horizons`` (default: the plan's), with ``history``
    (default: the recipe's). Reported horizon steps beyond a horizon are dropped."""

    name = "long_horizon"
    params = {"history": None, "horizons": None}

    def settings(self, entry: PlanProtocol) -> list[tuple[str, dict[str, Any], int | None]]:
        horizons = entry.params.get("horizons") or self.plan.horizons
        if not horizons:
            raise ConfigError(
                "protocol long_horizon has no horizons", "give the plan horizons: [96, 192]"
            )
        horizons = _ints(horizons, "long_horizon horizons", minimum=1)
        history = entry.params.get("history")
        params = {} if history is None else {"history": _ints(history, "history", 1)[0]}
        return [(d, params, h) for d in self.plan.dataset_names(entry) for h in horizons]

    def param_label(self, cell: Cell, recipe: Recipe) -> str | None:
        return f"{recipe.data.history}->{recipe.data.horizon}"

    def overrides(self, cell: Cell) -> list[str]:
        base = self.plan.recipe(cell).data
        items = [f"data.horizon={cell.horizon}"]
        if "history" in cell.protocol_params:
            items.append(f"data.history={cell.protocol_params['history']}")
        if base.horizons is not None:
            kept = [h for h in base.horizons if h <= cell.horizon]
            items.append(f"data.horizons={json.dumps(kept or None)}")
        return items


@register_protocol
class ZeroShotTransfer(Protocol):
    """Train on ``source`` (full protocol), test on ``target``'s test windows untrained.

    The cell's directory is the source run; ``transfer/metrics.json`` holds the target's
    scores (the ``test`` block, ``num_test_windows``, ``metric_scale``, ``scaler``,
    ``target_split`` and ``rows_read``: the target's rows the test windows span). The
    target's data section is the source recipe's with the target's spec and ``set``
    (so the target's own split and metric scale where the recipe leaves them to the
    dataset), history and horizon those of the trained run. With ``fit_scaler: false``
    (default) the inputs are scaled with the run's scaler and nothing is fit on the
    target; ``fit_scaler: true`` fits it on the target's training rows (the papers' code).
    """

    name = "zero_shot_transfer"
    params = {"source": None, "target": None, "pairs": None, "fit_scaler": False}
    metrics_file = "transfer/metrics.json"

    def settings(self, entry: PlanProtocol) -> list[tuple[str, dict[str, Any], int | None]]:
        p = entry.params
        pairs = p.get("pairs")
        if pairs is None:
            if p.get("source") is None or p.get("target") is None:
                raise ConfigError(
                    "protocol zero_shot_transfer needs source and target, or pairs",
                    "write e.g. {name: zero_shot_transfer, source: ETTh1, target: ETTh2}",
                )
            pairs = [[p["source"], p["target"]]]
        elif p.get("source") is not None or p.get("target") is not None:
            raise ConfigError(
                "protocol zero_shot_transfer has both pairs and source/target",
                "give one of them",
            )
        if not isinstance(pairs, list) or not all(
            isinstance(x, (list, tuple)) and len(x) == 2 for x in pairs
        ):
            raise ConfigError(
                f"zero_shot_transfer pairs={pairs!r} are not [source, target] pairs",
                "write e.g. pairs: [[ETTh1, ETTh2], [ETTh2, ETTh1]]",
            )
        fit = p.get("fit_scaler", False)
        if not isinstance(fit, bool):
            raise ConfigError(f"fit_scaler={fit!r} is not true or false", "use true or false")
        allowed = self.plan.dataset_names(entry)
        out = []
        for source, target in pairs:
            for name in (source, target):
                self.plan.dataset(name)
            if source == target:
                raise ConfigError(
                    f"zero_shot_transfer from {source!r} to itself", "use the full protocol"
                )
            if source in allowed:
                params = {"source": source, "target": target, "fit_scaler": fit}
                out.append((source, params, None))
        return out

    @classmethod
    def slug(cls, params: dict[str, Any]) -> str:
        return f"to-{params['target']}" + ("-fit-scaler" if params.get("fit_scaler") else "")

    def dataset_label(self, cell: Cell) -> str:
        return f"{cell.protocol_params['source']}->{cell.protocol_params['target']}"

    def param_label(self, cell: Cell, recipe: Recipe) -> str | None:
        label = self.dataset_label(cell)
        return label + (" (scaler fit on target)" if cell.protocol_params["fit_scaler"] else "")

    def run(self, cell: Cell, cell_dir: Path, resume: bool = False) -> None:
        from llm_st.data.task import prepare_task
        from llm_st.pipeline.evaluate import evaluate_pipeline
        from llm_st.pipeline.forecast import ForecastPipeline

        out = cell_dir / "transfer"
        if out.exists():
            shutil.rmtree(out)
        recipe = self.recipe(cell)
        train_cell(recipe, cell_dir, resume)
        pipeline = ForecastPipeline.from_run(cell_dir, device=recipe.training.device)
        fit = bool(cell.protocol_params["fit_scaler"])
        target = self.plan.recipe(
            Cell(cell.protocol_params["target"], cell.protocol, {}, cell.method, cell.seed),
            recipe_of=cell.dataset,
        ).data
        task = prepare_task(
            load_data(target.spec, data_dir=target.data_dir),
            pipeline.history,
            pipeline.horizon,
            ratios=target.ratios,
            borders=target.borders,
            scaler=target.scaler,
            metric_scale=target.metric_scale,
            fitted_scaler=None if fit else pipeline.scaler,
        )
        starts = task.index("test").starts
        result, _ = evaluate_pipeline(
            pipeline, task, "test", fit, recipe.data.report_horizons(), progress=False
        )
        out.mkdir()
        atomic_write_json(
            out / "metrics.json",
            {
                "dataset": self.dataset_label(cell),
                "source": cell.protocol_params["source"],
                "target": cell.protocol_params["target"],
                "test": result["metrics"],
                "num_test_windows": result["num_windows"],
                "metric_scale": result["metric_scale"],
                "scaler": result["scaler"],
                "target_split": task.split.to_dict(),
                "rows_read": [int(starts.min()), int(starts.max()) + task.history + task.horizon],
                "seconds": result["seconds"],
            },
        )


# ------------------------------------------------------------------ the plan
@dataclass
class Plan:
    """A benchmark plan (see the module docstring for the YAML format)."""

    name: str
    datasets: list[PlanDataset]
    methods: list[PlanMethod]
    protocols: list[PlanProtocol]
    seeds: list[int] = field(default_factory=lambda: [0])
    horizons: list[int] | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    base_dir: Path | None = field(default=None, compare=False, repr=False)
    """Where relative recipe paths are looked up first (the plan file's folder)."""

    def __getstate__(self) -> dict[str, Any]:
        # the caches stay behind: a worker process builds its own (and a protocol class
        # defined where a worker cannot import it is not pickled along)
        return {k: v for k, v in self.__dict__.items() if k not in ("_protocols", "_raw")}

    # ---- loading
    @classmethod
    def load(cls, path: str | Path, overrides: Sequence[str] = ()) -> Plan:
        """Read a plan file, apply ``key=value`` overrides (YAML values) and check it.

        Overrides set a top-level key (``seeds=[0]``, ``horizons=[96]``) or one item of the
        budget (``budget.training.max_steps=50``).
        """
        path = Path(path)
        raw = read_yaml_file(path, "plan", "alignment/benchmarks/smoke.yaml")
        raw = apply_plan_overrides(raw if raw is not None else {}, overrides, str(path))
        return cls.from_dict(raw, base_dir=path.resolve().parent, where=f"plan {str(path)!r}")

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], base_dir: str | Path | None = None, where: str = "plan"
    ) -> Plan:
        raw = _check_keys(raw, PLAN_KEYS, where)
        for key in ("name", "datasets", "methods", "protocols"):
            if not raw.get(key):
                raise ConfigError(f"{where} has no {key}", f"add {key}: (see llm_st.bench.plan)")
        for key in ("datasets", "methods", "protocols"):
            if not isinstance(raw[key], list):
                raise ConfigError(f"{where}: {key} is not a list", f"write {key} as a list")
        budget = _budget(raw.get("budget"), f"{where}: budget")
        if not isinstance(budget, dict):
            raise ConfigError(
                f"{where}: budget={budget!r} is not a mapping", "write e.g. training.max_steps: 50"
            )
        horizons = raw.get("horizons")
        description = raw.get("description")
        plan = cls(
            name=_string(raw["name"], "name"),
            datasets=[
                PlanDataset.from_raw(d, f"datasets[{i}]") for i, d in enumerate(raw["datasets"])
            ],
            methods=[PlanMethod.from_raw(m, f"methods[{i}]") for i, m in enumerate(raw["methods"])],
            protocols=[
                PlanProtocol.from_raw(p, f"protocols[{i}]") for i, p in enumerate(raw["protocols"])
            ],
            seeds=_ints(raw.get("seeds", [0]), "seeds"),
            horizons=None if horizons is None else _ints(horizons, "horizons", minimum=1),
            budget={str(k): v for k, v in budget.items()},
            description=None if description is None else str(description),
            base_dir=None if base_dir is None else Path(base_dir),
        )
        plan._check()
        return plan

    def _check(self) -> None:
        for kind, items in (("dataset", self.datasets), ("method", self.methods)):
            names = [x.name for x in items]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ConfigError(
                    f"the plan names {kind}(s) {dup} more than once",
                    f"give every {kind} its own name: (e.g. name: {dup[0]}-2)",
                )
        for i, entry in enumerate(self.protocols):
            for name in entry.datasets or []:
                self.dataset(name)
            for name in entry.methods or []:
                self.method(name)
            if entry.methods is not None and not entry.methods:
                raise ConfigError(f"protocols[{i}] has an empty methods list", "drop it or fill it")
        self.cells()  # expands every protocol: bad parameters and duplicates raise here

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` reads back to an equal plan (``plan.yaml``)."""
        return {
            "name": self.name,
            "description": self.description,
            "datasets": [d.to_dict() for d in self.datasets],
            "methods": [m.to_dict() for m in self.methods],
            "protocols": [p.to_dict() for p in self.protocols],
            "horizons": self.horizons,
            "seeds": list(self.seeds),
            "budget": copy.deepcopy(self.budget),
        }

    # ---- lookups
    def dataset(self, name: str) -> PlanDataset:
        for d in self.datasets:
            if d.name == name:
                return d
        raise ConfigError(
            f"the plan has no dataset {name!r}",
            f"use one of {', '.join(d.name for d in self.datasets)}",
        )

    def method(self, name: str) -> PlanMethod:
        for m in self.methods:
            if m.name == name:
                return m
        raise ConfigError(
            f"the plan has no method {name!r}",
            f"use one of {', '.join(m.name for m in self.methods)}",
        )

    def dataset_names(self, entry: PlanProtocol) -> list[str]:
        """The datasets a protocol entry runs on (its ``datasets``, else all), plan order."""
        names = [d.name for d in self.datasets]
        return names if entry.datasets is None else [n for n in names if n in entry.datasets]

    def protocol(self, name: str) -> Protocol:
        """The protocol ``name`` serving this plan."""
        cache = self.__dict__.setdefault("_protocols", {})
        if name not in cache:
            cache[name] = protocol_class(name)(self)
        return cache[name]

    # ---- expansion
    def cells(self) -> list[Cell]:
        """Every cell, in plan order: protocol entries, their settings (dataset, parameters,
        horizon), methods, seeds."""
        cells: list[Cell] = []
        for entry in self.protocols:
            for dataset, params, horizon in self.protocol(entry.name).settings(entry):
                for method in self.methods:
                    if entry.methods is not None and method.name not in entry.methods:
                        continue
                    for seed in method.seeds or self.seeds:
                        cells.append(
                            Cell(dataset, entry.name, dict(params), method.name, seed, horizon)
                        )
        ids = [c.cell_id for c in cells]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ConfigError(
                f"the plan runs cell(s) {dup[:3]} more than once",
                "remove the repeated protocol entry, method or seed",
            )
        return cells

    # ---- recipes
    def budget_overrides(self) -> list[str]:
        return [f"{k}={json.dumps(v)}" for k, v in self.budget.items()]

    def _recipe_file(self, method: PlanMethod, folder: str) -> Path:
        text = str(method.recipe)
        if "/" not in text and not text.endswith((".yaml", ".yml")):
            candidates = [recipe_path(text, folder)]
        else:
            text = text.replace("{dataset}", folder).replace("{method}", method.name)
            path = Path(text).expanduser()
            candidates = [path]
            if not path.is_absolute():
                candidates = [(self.base_dir or Path.cwd()) / path]
                if path.parts[0] == "alignment":
                    candidates.append(recipes_root().joinpath(*path.parts[1:]))
                candidates.append(Path.cwd() / path)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise ConfigError(
            f"method {method.name!r} has no recipe for dataset folder {folder!r} "
            f"({str(candidates[0])!r} does not exist)",
            "point the method's recipe at an existing file (e.g. "
            "alignment/gpt4ts/ETTh1/config.yaml: its data.spec is replaced by the dataset's) "
            "or give the recipe inline",
        )

    def _raw_recipe(self, method: PlanMethod, folder: str) -> tuple[dict[str, Any], str]:
        if isinstance(method.recipe, dict):
            raw = copy.deepcopy(method.recipe)
            return raw, f"the inline recipe of {method.name!r}"
        path = self._recipe_file(method, folder)
        cache = self.__dict__.setdefault("_raw", {})
        if path not in cache:
            try:
                cache[path] = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(
                    f"recipe {str(path)!r} is not valid YAML: {' '.join(str(exc).split())}",
                    "fix the YAML syntax",
                ) from None
        return copy.deepcopy(cache[path]), str(path)

    def recipe(self, cell: Cell, extra: Sequence[str] = (), recipe_of: str | None = None) -> Recipe:
        """The recipe of ``cell`` with the protocol's ``extra`` overrides.

        ``recipe_of``: the dataset whose recipe folder the method's recipe is taken from
        (default: the cell's dataset; the transfer protocol reads its target this way).
        """
        method, data = self.method(cell.method), self.dataset(cell.dataset)
        raw, source = self._raw_recipe(method, self.dataset(recipe_of or cell.dataset).recipes)
        items = [f"data.spec={json.dumps(data.spec)}", *data.set, *self.budget_overrides()]
        items += method.set
        if method.backbone_mode is not None:
            items.append(f"model.backbone.mode={json.dumps(method.backbone_mode)}")
        items += [*extra, f"training.seed={cell.seed}"]
        try:
            return recipe_from_dict(raw, items)
        except ConfigError as exc:
            raise ConfigError(
                f"cell {cell.cell_id} (recipe {source}): {exc.problem}", exc.fix
            ) from None


def apply_plan_overrides(
    raw: dict[str, Any], overrides: Sequence[str], where: str = "plan"
) -> dict[str, Any]:
    """Set ``key=value`` items (YAML values) in the raw plan mapping (a copy, returned):
    a top-level key, or ``budget.<recipe key>``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} is not a mapping", "write name:, datasets:, methods:, ...")
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"plan override {item!r} is not key=value", "write e.g. seeds=[0]")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"plan override {item!r}: value is not valid YAML ({exc})", "quote strings"
            ) from None
        if key.startswith("budget."):
            budget = _budget(raw.get("budget"), f"{where}: budget")
            if not isinstance(budget, dict):
                raise ConfigError(f"{where}: budget is not a mapping", "write key: value lines")
            budget[key[len("budget.") :]] = value
            raw["budget"] = budget
        elif key in PLAN_KEYS:
            raw[key] = value
        else:
            close = difflib.get_close_matches(key, PLAN_KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"plan override {item!r} sets no plan key",
                f"{hint}set one of {', '.join(PLAN_KEYS)} or budget.<section.key>",
            )
    return raw


# the protocols beyond forecasting (shift, imputation, anomaly) register themselves
import llm_st.bench.protocols  # noqa: E402, F401
