"""Recipes: one YAML file that fixes data, model, objective and training of a run.

A recipe is a tree of dataclasses (:class:`Recipe` with the sections
:class:`DataConfig`, :class:`ModelConfig`, :class:`ObjectiveConfig` and
:class:`TrainingConfig`). Every field carries a ``help`` text; unknown keys,
wrong types and contradictions raise a :class:`~llm_st.errors.ConfigError` that
names the key, its section and the fix. Values are coerced to the field type, so
YAML 1.1's ``lr: 1e-4`` (a string for PyYAML) reads as the float it means.

>>> recipe = load_recipe("alignment/var/synthetic-traffic/config.yaml", ["training.lr=3e-4"])
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from llm_st.errors import ConfigError

SCHEDULERS = ("cosine", "constant", "linear")
MIXED_PRECISION = ("no", "fp16", "bf16")
SELECT_METRICS = ("val_loss", "val_mae")
DEVICES = ("auto", "cpu", "cuda")
SCALER_KEYS = ("kind", "axis", "use_mask")
METRIC_SCALES = ("original", "normalized")
SCALER_FITS = ("split", "trained")
HARDWARE_SETTINGS = ("device", "compile", "micro_batch_size")
"""Training settings that say how a run computes, not what it computes: a resumed run may
change them (results then differ by rounding only)."""


def recipes_root() -> Path:
    """The folder of the shipped recipes, plans and pre-training recipes: a checkout's
    ``alignment/``, else the installed copy (``llm_st.recipes``, see ``setup.py``)."""
    checkout = Path(__file__).resolve().parents[1] / "alignment"
    if checkout.is_dir():
        return checkout
    spec = importlib.util.find_spec("llm_st.recipes")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the standard recipes are neither in a checkout (alignment/) nor installed "
            "(llm_st.recipes)",
            "reinstall llm-st, or pass the folder of the recipes",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def cache_root() -> Path:
    """Where llm-st caches what it builds (tiny test models, instruction datasets, the LM
    pre-trained here): ``$LLM_ST_CACHE`` if set, else ``~/.cache/llm_st``."""
    root = os.environ.get("LLM_ST_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "llm_st"


def _help(text: str, choices: tuple[str, ...] = (), **kw: Any) -> Any:
    """A field with its ``help`` text and, for a string field, the ``choices`` it accepts
    (checked when the value is coerced)."""
    return field(metadata={"help": text, "choices": choices}, **kw)


def _choices(cls: type, name: str) -> tuple[str, ...]:
    return next(f.metadata.get("choices", ()) for f in dataclasses.fields(cls) if f.name == name)


class _Section:
    """Shared behaviour of the recipe dataclasses: type coercion, then :meth:`_check`."""

    _section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            where = f"{self._section}.{f.name}" if self._section else f.name
            value = _coerce(
                getattr(self, f.name), hints[f.name], where, f.metadata.get("choices", ())
            )
            setattr(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Reject contradictory values (subclasses)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts, scalars) that :func:`recipe_from_dict` reads back."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _require(ok: bool, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(problem, fix)


def _choice(value: str, choices: tuple[str, ...], where: str) -> None:
    _require(
        value in choices, f"{where}={value!r} is not supported", f"use one of {', '.join(choices)}"
    )


@dataclass
class DataConfig(_Section):
    """Which data, which windows, which split and scaling (the protocol of ``docs/protocol.md``)."""

    _section: ClassVar[str] = "data"

    spec: str = _help("named dataset (METR-LA, ETTh1, ...), synthetic name or file path")
    data_dir: str | None = _help(
        "directory of the named datasets (default $LLM_ST_DATA)", default=None
    )
    history: int = _help("input window length L (steps)", default=12)
    horizon: int = _help("forecast length H (steps)", default=12)
    stride: int = _help("step between training windows (the test always uses 1)", default=1)
    val_stride: int = _help(
        "step between validation windows (a budget for slow models: early stopping and the "
        "best weights judged on a subset, evenly spread); the test always scores every window",
        default=1,
    )
    ratios: list[float] | None = _help(
        "chronological train/val/test fractions; default: the dataset's protocol", default=None
    )
    borders: list[int] | None = _help(
        "train/val/test row counts (e.g. ETT 8640/2880/2880); exclusive with ratios", default=None
    )
    scaler: dict[str, Any] | None = _help(
        "scaler overrides: kind (standard|minmax|none), axis, use_mask", default=None
    )
    metric_scale: str | None = _help(
        "original (ST graph protocol) or normalized (long-term series); default: dataset's",
        default=None,
        choices=METRIC_SCALES,
    )
    train_fraction: float | None = _help(
        "few-shot: train on the first fraction of the training windows only (0.05, 0.1: "
        "the Time-LLM / GPT4TS few-shot setting); validation and test unchanged (see "
        "llm_st.data.splits.train_fraction_split); null: all",
        default=None,
    )
    scaler_fit: str = _help(
        "rows the scaler is fit on with train_fraction: split (the whole training split, as "
        "the papers' loaders: normalized metrics on the full setting's scale) or trained "
        "(only the rows trained on: nothing of the dropped rows is used)",
        default="split",
        choices=SCALER_FITS,
    )
    horizons: list[int] | None = _help(
        "1-based horizon steps reported besides the average; default: those of 3, 6, 12 "
        "within the horizon, and the horizon itself",
        default=None,
    )

    def _check(self) -> None:
        _require(
            bool(self.spec), "data.spec is empty", "name a dataset, e.g. spec: synthetic-traffic"
        )
        for name in ("history", "horizon", "stride", "val_stride"):
            value = getattr(self, name)
            _require(value >= 1, f"data.{name}={value} must be at least 1", f"set data.{name} >= 1")
        _require(
            self.ratios is None or self.borders is None,
            "data.ratios and data.borders are both set",
            "keep one of them (ratios are fractions, borders are row counts)",
        )
        if self.ratios is not None:
            _require(
                len(self.ratios) == 3 and min(self.ratios) >= 0 and sum(self.ratios) <= 1 + 1e-9,
                f"data.ratios={self.ratios} are not three fractions summing to at most 1",
                "use e.g. [0.7, 0.1, 0.2]",
            )
        if self.borders is not None:
            _require(
                len(self.borders) == 3 and min(self.borders) >= 0,
                f"data.borders={self.borders} are not three row counts",
                "use e.g. [8640, 2880, 2880]",
            )
        _require(
            self.train_fraction is None or 0 < self.train_fraction <= 1,
            f"data.train_fraction={self.train_fraction} is not a fraction in (0, 1]",
            "use e.g. 0.05 or 0.1 (few-shot), or null for the whole training split",
        )
        if self.scaler is not None:
            unknown = sorted(set(self.scaler) - set(SCALER_KEYS))
            _require(
                not unknown,
                f"unknown key(s) {unknown} in data.scaler",
                f"valid keys: {', '.join(SCALER_KEYS)}",
            )
        bad = [h for h in self.horizons or [] if not 1 <= h <= self.horizon]
        _require(
            not bad,
            f"data.horizons {bad} lie outside 1..{self.horizon} (data.horizon)",
            "report horizon steps within the forecast length",
        )

    def report_horizons(self) -> tuple[int, ...]:
        """The horizon steps to report (``horizons``, or the default described there)."""
        if self.horizons is not None:
            return tuple(self.horizons)
        return tuple(sorted({h for h in (3, 6, 12) if h <= self.horizon} | {self.horizon}))


@dataclass
class ModelConfig(_Section):
    """The method, by its registry name, its pretrained backbone and its hyper-parameters."""

    _section: ClassVar[str] = "model"

    name: str = _help("registered method name (see llm_st.models.list_models())")
    params: dict[str, Any] = _help(
        "keyword arguments of the method (checked when the model is built)", default_factory=dict
    )
    backbone: dict[str, Any] | None = _help(
        "pretrained backbone of a method built on one (the LLM adapters, VisionTS): fields "
        "of llm_st.backbones.spec.BackboneSpec (source, num_layers, mode, freeze, lora, ...), "
        "each replacing the method's default (checked when the model is built); null: the "
        "method's default, or no backbone",
        default=None,
    )

    def _check(self) -> None:
        _require(
            "backbone" not in self.params,
            "model.params.backbone is set; the backbone is a block of its own",
            "move it to model.backbone, e.g. backbone: {source: tiny-gpt2}",
        )


@dataclass
class ObjectiveConfig(_Section):
    """What the engine minimizes; ``pretrain`` runs another objective first."""

    _section: ClassVar[str] = "objective"

    name: str = _help(
        "registered objective name (see llm_st.objectives.list_objectives())", default="regression"
    )
    params: dict[str, Any] = _help(
        "keyword arguments of the objective, e.g. loss: mae|mse|huber", default_factory=dict
    )
    pretrain: ObjectiveConfig | None = _help(
        "objective trained for `epochs` epochs before this one (e.g. masked reconstruction)",
        default=None,
    )
    epochs: int | None = _help(
        "epochs of a pretrain objective (only inside pretrain)", default=None
    )

    def _check(self) -> None:
        if self.pretrain is not None:
            _require(
                self.epochs is None,
                f"objective.epochs={self.epochs} is set on the fine-tuning objective",
                "set training.epochs for fine-tuning; epochs belongs to objective.pretrain",
            )
            _require(
                self.pretrain.pretrain is None,
                "objective.pretrain has a pretrain section of its own",
                "give one pretrain objective",
            )
            _require(
                self.pretrain.epochs is not None and self.pretrain.epochs >= 1,
                f"objective.pretrain.epochs={self.pretrain.epochs} must be at least 1",
                "set objective.pretrain.epochs, e.g. 10",
            )


@dataclass
class TrainingConfig(_Section):
    """Optimization, evaluation schedule, early stopping and hardware of a run."""

    _section: ClassVar[str] = "training"

    epochs: int = _help("maximum number of passes over the training windows", default=10)
    max_steps: int | None = _help(
        "stop after this many optimizer steps (overrides epochs)", default=None
    )
    batch_size: int = _help("training windows per batch and process", default=32)
    eval_batch_size: int = _help("windows per batch in evaluation", default=64)
    lr: float = _help("peak learning rate of AdamW", default=1e-4)
    weight_decay: float = _help("AdamW decoupled weight decay", default=0.0)
    scheduler: str = _help(
        "learning-rate schedule after warm-up: cosine|constant|linear",
        default="cosine",
        choices=SCHEDULERS,
    )
    warmup_steps: int = _help("optimizer steps of linear warm-up from 0 to lr", default=0)
    grad_clip: float | None = _help(
        "clip the global gradient norm to this (null: no clipping)", default=5.0
    )
    grad_accum: int = _help("batches whose gradients are summed per optimizer step", default=1)
    micro_batch_size: int | str | None = _help(
        "split every batch into micro-batches of this many windows, whose gradients add up to "
        "the whole batch's (less memory, the same result up to rounding); auto: on a CUDA GPU "
        "halve it from batch_size until the first step fits in memory (on the CPU, and with "
        "several processes, as null); null: the batch as it is",
        default=None,
        choices=("auto",),
    )
    mixed_precision: str = _help(
        "no|fp16|bf16; falls back to no, with a warning, where the device lacks it",
        default="no",
        choices=MIXED_PRECISION,
    )
    compile: bool = _help(
        "torch.compile the model and objective for training (pays on GPUs; compiling takes "
        "seconds to minutes and may not pay on the CPU)",
        default=False,
    )
    seed: int = _help("seed of model initialization, data order and dropout", default=0)
    patience: int | None = _help(
        "stop after this many evaluations without validation improvement (null: never)", default=3
    )
    eval_every: int | None = _help(
        "evaluate (and checkpoint) every this many optimizer steps; null: every epoch", default=None
    )
    select_metric: str = _help(
        "validation score for early stopping and best weights: val_loss (objective) or val_mae",
        default="val_loss",
        choices=SELECT_METRICS,
    )
    device: str = _help(
        "auto (GPU when there is one), cpu or cuda", default="auto", choices=DEVICES
    )

    def _check(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "grad_accum"):
            value = getattr(self, name)
            _require(
                value >= 1,
                f"training.{name}={value} must be at least 1",
                f"set training.{name} >= 1",
            )
        for name in ("max_steps", "patience", "eval_every"):
            value = getattr(self, name)
            _require(
                value is None or value >= 1,
                f"training.{name}={value} must be at least 1",
                f"set training.{name} >= 1 or null",
            )
        _require(self.lr > 0, f"training.lr={self.lr} must be positive", "use e.g. 1e-4")
        _require(
            self.weight_decay >= 0,
            f"training.weight_decay={self.weight_decay} is negative",
            "use 0 or a small positive value",
        )
        _require(
            self.warmup_steps >= 0,
            f"training.warmup_steps={self.warmup_steps} is negative",
            "use 0 or more",
        )
        _require(
            self.grad_clip is None or self.grad_clip > 0,
            f"training.grad_clip={self.grad_clip} must be positive",
            "use e.g. 1.0 or null",
        )
        _require(
            not isinstance(self.micro_batch_size, int) or self.micro_batch_size >= 1,
            f"training.micro_batch_size={self.micro_batch_size} must be at least 1",
            "set training.micro_batch_size >= 1, auto or null",
        )


@dataclass
class Recipe(_Section):
    """A whole run: data, model, objective, training and an optional name."""

    data: DataConfig = _help("data, windows, split and scaling")
    model: ModelConfig = _help("the method and its hyper-parameters")
    objective: ObjectiveConfig = _help("training objective(s)", default_factory=ObjectiveConfig)
    training: TrainingConfig = _help("optimization and hardware", default_factory=TrainingConfig)
    name: str | None = _help("run name shown in reports", default=None)


# ------------------------------------------------------------------ coercion
def _type_error(where: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{where}={value!r} is not {expected}", f"give {where} {expected}")


def _expected(hint: Any, choices: tuple[str, ...]) -> str:
    """How an error message names what a field of type ``hint`` takes."""
    if hint is str and choices:
        return f"one of {', '.join(choices)}"
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(value: Any, hint: Any, where: str, choices: tuple[str, ...] = ()) -> Any:
    """``value`` converted to the type ``hint`` (numeric strings to numbers), else ConfigError.

    A string field with ``choices`` must hold one of them; where they include ``"no"``,
    YAML 1.1's ``no`` / ``false`` (which PyYAML reads as False) stands for ``"no"``.
    A union tries its types in order.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], where, choices)
        for option in inner:
            try:
                return _coerce(value, option, where, choices)
            except ConfigError:
                pass
        raise _type_error(where, value, " or ".join(_expected(a, choices) for a in inner))
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else _from_dict(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(where, value, "a list")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(where, value, "a mapping")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise _type_error(where, value, "true or false")
        return value
    if hint in (int, float):
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise _type_error(where, value, f"a number ({hint.__name__})") from None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise _type_error(where, value, f"a number ({hint.__name__})")
        if hint is int:
            if number != int(number):
                raise _type_error(where, value, "a whole number")
            return int(number)
        return float(number)
    if hint is str:
        if value is False and "no" in choices:
            return "no"
        if not isinstance(value, str):
            raise _type_error(where, value, _expected(str, choices))
        if choices:
            _choice(value, choices, where)
        return value
    raise TypeError(f"no coercion for {hint!r}")  # a recipe field of an unsupported type


def _valid_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _unknown_key(key: str, path: str, cls: type) -> ConfigError:
    valid = _valid_keys(cls)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    where = f"in section {path!r}" if path else "at the top level of the recipe"
    return ConfigError(f"unknown key {key!r} {where}", f"{hint}valid keys: {', '.join(valid)}")


def _from_dict(cls: type, raw: Any, path: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown and missing keys."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"section {path or 'recipe'!r} must be a mapping, got {raw!r}",
            "write it as key: value lines",
        )
    for key in raw:
        if key not in _valid_keys(cls):
            raise _unknown_key(str(key), path, cls)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in raw
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f"section {path!r}" if path else "the recipe"
        raise ConfigError(f"{where} lacks required key(s) {missing}", f"add {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    prefix = f"{path}." if path else ""
    return cls(
        **{k: _coerce(v, hints[k], f"{prefix}{k}", _choices(cls, k)) for k, v in raw.items()}
    )


# ------------------------------------------------------------------ overrides
def _field_type(cls: type, key: str, path: str) -> Any:
    """The type of field ``key`` of dataclass ``cls``, ``Optional`` removed."""
    if key not in _valid_keys(cls):
        raise _unknown_key(key, path, cls)
    hint = typing.get_type_hints(cls)[key]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner[0] if len(inner) == 1 else hint
    return hint


def apply_overrides(
    raw: dict[str, Any], overrides: list[str] | tuple[str, ...], schema: Any = None
) -> dict[str, Any]:
    """Set ``section.key=value`` items in the raw recipe mapping ``raw`` (in place, returned).

    Values are parsed as YAML (``3e-4``, ``true``, ``[0.6, 0.2, 0.2]``, ``null``). Paths
    are checked against the fields of ``schema`` (default :class:`Recipe`; another
    dataclass of sections, e.g. the pre-training recipe); below a free mapping
    (``model.params``) any key may be set, and a list element is addressed by its index
    (``corpus.sources.0.max_windows=16``).
    """
    root = Recipe if schema is None else schema
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = [p.strip() for p in key.split(".")]
        if not sep or not all(parts):
            raise ConfigError(f"override {item!r} is not key=value", "write e.g. training.lr=3e-4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"override {item!r}: value is not valid YAML ({exc})",
                "quote strings, e.g. data.spec='a:b'",
            ) from None
        schema_at: Any = root
        node: Any = raw
        for depth, part in enumerate(parts):
            path = ".".join(parts[:depth])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        f"override {item!r}: {path} has no element {part!r}",
                        f"address one of its {len(node)} elements by index 0..{len(node) - 1}",
                    )
                index: Any = int(part)
            else:
                index = part
                if dataclasses.is_dataclass(schema_at):
                    schema_at = _field_type(schema_at, part, path)
            if depth == len(parts) - 1:
                node[index] = value
                break
            if typing.get_origin(schema_at) is list:
                schema_at = typing.get_args(schema_at)[0]
            elif (
                not isinstance(node, list)
                and not dataclasses.is_dataclass(schema_at)
                and typing.get_origin(schema_at) is not dict
            ):
                name = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"override {item!r}: {name} is a value, not a section",
                    f"set {name}=... directly",
                )
            child = node[index] if isinstance(node, list) else node.get(index)
            if not isinstance(child, (dict, list)):
                child = {}
                node[index] = child
            node = child
    return raw


# ------------------------------------------------------------------ loading
def recipe_from_dict(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """A :class:`Recipe` from plain data (as YAML gives it) plus ``overrides``."""
    raw = apply_overrides(copy.deepcopy(raw or {}), overrides)
    return _from_dict(Recipe, raw, "")


def read_yaml_file(path: str | Path, what: str, example: str) -> Any:
    """The YAML content of ``path`` (safe loader), or a :class:`ConfigError` naming ``what``
    the file should be (``"recipe"``, ``"plan"``) and an ``example`` path when it is missing
    or not YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{what} file {str(path)!r} does not exist",
            f"pass the path of a YAML {what}, e.g. {example}",
        )
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{what} {str(path)!r} is not valid YAML: {' '.join(str(exc).split())}",
            "fix the YAML syntax",
        ) from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply ``section.key=value`` overrides and validate everything."""
    path = Path(path)
    raw = read_yaml_file(path, "recipe", "alignment/var/synthetic-traffic/config.yaml")
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(
            f"recipe {str(path)!r} is not a mapping", "write sections data:, model:, ..."
        )
    return recipe_from_dict(raw or {}, overrides)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe as YAML (read back by :func:`load_recipe` to an equal recipe)."""
    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
