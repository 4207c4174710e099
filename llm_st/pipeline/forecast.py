"""The front door: load a trained run, a pretrained LM or a baseline, and forecast with it.

:class:`ForecastPipeline` answers the same calls for every method family:

- :meth:`ForecastPipeline.from_run`: a run directory written by ``llm-st train`` (model
  rebuilt from its recipe, trained tensors and scaler loaded, frozen backbone re-read
  from its recorded source and checked against the manifest);
- :meth:`ForecastPipeline.from_pretrained`: a causal LM forecasting zero-shot from
  prompts (tiny name, local directory or hub id);
- :meth:`ForecastPipeline.from_method`: a non-learned baseline (``last_value``,
  ``seasonal_naive``, ``historical_average``, ``var``) fit on the rows before the first
  forecast, or on training rows given to :meth:`ForecastPipeline.fit`.

Then :meth:`~ForecastPipeline.predict` forecasts an :class:`~llm_st.data.STData`, a named
dataset, a file or an array, after its last row or after chosen cut-off times (several
at once, batched), and returns a :class:`~llm_st.forecast.Forecast` on the original scale
with timestamps; :meth:`~ForecastPipeline.predict_df` does the same for a long data frame
(``unique_id, ds, y``) and returns the long format.

A *cut-off* is the last history step of a window: the forecast covers the ``horizon``
steps after it, which may lie past the end of the data (they are then timestamped by
continuing the data's frequency).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from llm_st.config import Recipe, load_recipe
from llm_st.data.container import STData
from llm_st.data.scalers import Scaler, make_scaler
from llm_st.data.timefeatures import step_times, time_features_at
from llm_st.engine.accel import resolve_device
from llm_st.engine.artifacts import MANIFEST, load_data_info, load_model
from llm_st.errors import ConfigError, DataError, ModelLoadError
from llm_st.forecast import DEFAULT_QUANTILES, Forecast
from llm_st.models.base import DataInfo, STModel
from llm_st.models.registry import build_model, get_model_class

logger = logging.getLogger("llm_st")

DataLike = STData | str | Path | np.ndarray | torch.Tensor
_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def as_data(data: DataLike, data_dir: str | Path | None = None) -> STData:
    """An :class:`STData` from a container, a named dataset / file spec, or an array
    ``[T]``, ``[T, N]`` or ``[T, N, C]``."""
    if isinstance(data, STData):
        return data
    if isinstance(data, (str, Path)):
        from llm_st.data import load

        return load(data, data_dir=data_dir)
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    if isinstance(data, np.ndarray):
        values = data.reshape(len(data), 1, 1) if data.ndim == 1 else data
        return STData(values)
    raise DataError(
        f"cannot forecast a {type(data).__name__}",
        "pass an STData, a dataset name or file path, or an array [T], [T, N] or [T, N, C]",
    )


def cutoff_rows(data: STData, at: Any, history: int) -> np.ndarray:
    """Rows of the cut-offs ``at`` (None: the last row; row numbers; timestamps), checked to
    have ``history`` rows of history."""
    if at is None:
        rows = np.asarray([data.num_steps - 1])
    else:
        items = [at] if isinstance(at, (str, int, np.integer, pd.Timestamp)) else list(at)
        rows = np.asarray([_row_of(data, item) for item in items], np.int64)
    short = rows[rows < history - 1]
    if short.size:
        raise DataError(
            f"cut-off at row {int(short[0])} has {int(short[0]) + 1} rows of history, but the "
            f"model reads {history}",
            f"choose cut-offs at row {history - 1} or later",
        )
    return rows


def _row_of(data: STData, item: Any) -> int:
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        row = int(item) if item >= 0 else data.num_steps + int(item)
    else:
        if data.timestamps is None:
            raise DataError(
                f"cut-off {item!r} is a time but the data have no timestamps",
                "give cut-offs as row numbers",
            )
        try:
            stamp = pd.Timestamp(item)
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"cut-off {item!r} is not a time", "write e.g. 2018-06-01 08:00"
            ) from exc
        row = int(data.timestamps.get_indexer([stamp])[0])
        if row < 0:
            raise DataError(
                f"cut-off {stamp} is not a time step of {data.name} "
                f"({data.timestamps[0]} .. {data.timestamps[-1]}, every {data.freq})",
                "pass a timestamp of the data",
            )
    if not 0 <= row < data.num_steps:
        raise DataError(
            f"cut-off row {row} is outside the {data.num_steps} rows of {data.name}",
            f"use rows 0..{data.num_steps - 1}",
        )
    return row


def history_batch(
    data: STData, cutoffs: np.ndarray, history: int, horizon: int, scaler: Scaler
) -> dict[str, torch.Tensor]:
    """The model inputs of the windows ending at rows ``cutoffs`` ``[W]``: ``x`` ``[W, L, N,
    C]`` scaled with missing entries 0, ``x_mask``, ``x_time`` / ``y_time``, ``start``."""
    starts = cutoffs - history + 1
    rows = starts[:, None] + np.arange(history)
    mask = data.mask[rows]
    x = scaler.transform(data.values[rows])
    np.multiply(x, mask, out=x)
    times = time_features_at(data, starts[:, None] + np.arange(history + horizon))
    return {
        "x": torch.from_numpy(np.ascontiguousarray(x, np.float32)),
        "x_mask": torch.from_numpy(mask),
        "x_time": torch.from_numpy(times[:, :history]),
        "y_time": torch.from_numpy(times[:, history:]),
        "start": torch.from_numpy(starts),
    }


def _load_sampler(recipe: Recipe, info: DataInfo, model: STModel, run: Path) -> Any:
    """The run's objective when it draws samples (a probabilistic objective), with its
    trained weights; None otherwise."""
    from llm_st.engine.checkpoint import load_weights
    from llm_st.objectives import build_objective, get_objective_class

    if not get_objective_class(recipe.objective.name).probabilistic:
        return None
    objective = build_objective(recipe.objective.name, info, model, **recipe.objective.params)
    path = run / "objective.safetensors"
    if not path.is_file():
        raise ModelLoadError(
            f"{run} was trained with the {recipe.objective.name} objective but has no "
            "objective.safetensors to draw samples with",
            "re-train the run (its objective weights are written at the end of training)",
        )
    objective.load_state_dict(load_weights(path))
    return objective


class ForecastPipeline:
    """Forecast with any method of llm-st: a trained run, a zero-shot LM or a baseline.

    Build it with :meth:`from_run`, :meth:`from_pretrained` or :meth:`from_method`.

    Attributes
    ----------
    history, horizon : int
        Steps the model reads and forecasts.
    name : str
        What forecasts (method, backbone, run).
    model : STModel or None
        The trained model (None for the zero-shot path, and for a baseline before its
        first forecast).
    scaler : Scaler or None
        Inputs are scaled with it (the run's, fit on its training split).
    meta : dict
        Facts about the source (run directory, recipe name, metrics).
    """

    def __init__(
        self,
        *,
        history: int,
        horizon: int,
        name: str,
        model: STModel | None = None,
        scaler: Scaler | None = None,
        info: DataInfo | None = None,
        forecaster: Any = None,
        method: tuple[str, dict[str, Any]] | None = None,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        batch_size: int = 256,
        meta: dict[str, Any] | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be at least 1", "use e.g. 256")
        if dtype is not None and dtype not in _DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}", f"use one of {', '.join(_DTYPES)}")
        self.history, self.horizon, self.name = history, horizon, name
        self.model, self.scaler, self.info = model, scaler, info
        self.forecaster, self.method = forecaster, method
        self.batch_size, self.dtype = batch_size, dtype
        self.device = resolve_device(device)
        self.meta = dict(meta or {})
        self.recipe: Recipe | None = None  # set by from_run
        self.run_dir: Path | None = None
        self.backbone: str | None = None
        self._other: tuple[int, STModel] | None = None
        self.sampler: Any = None  # a probabilistic objective of the run (draws samples)
        self._fitted = model is not None
        if model is not None:
            self._place(model)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        backbone: str | None = None,
        batch_size: int = 256,
    ) -> ForecastPipeline:
        """Load a run directory written by ``llm-st train`` (or the engine).

        Parameters
        ----------
        run_dir
            Holds ``recipe.yaml``, ``data_info.json``, ``scaler.json``,
            ``model.safetensors`` (and ``manifest.json``, ``adapter/``).
        device
            ``"auto"`` (default: the GPU when there is one), ``"cpu"``, ``"cuda"``.
        dtype
            ``"bfloat16"`` / ``"float16"`` runs the forward pass under autocast.
        backbone
            Load the frozen backbone from here instead of the recorded source (e.g. a
            local copy of the hub model it was trained on); it must be the same model.

        Raises
        ------
        ModelLoadError
            A missing or incomplete run, or a backbone other than the one trained on.
        """
        run = Path(run_dir)
        if not run.is_dir():
            raise ModelLoadError(
                f"run directory {str(run)!r} does not exist",
                "pass the --out directory of llm-st train",
            )
        for name in ("recipe.yaml", "scaler.json"):
            if not (run / name).is_file():
                raise ModelLoadError(
                    f"{str(run)!r} has no {name}, so it is not a finished run of llm-st train",
                    "pass the --out directory of a finished llm-st train",
                )
        recipe = load_recipe(run / "recipe.yaml")
        info = load_data_info(run)
        model = build_from_recipe(recipe, info, backbone, run)
        load_model(model, run)
        sampler = _load_sampler(recipe, info, model, run)
        scaler = Scaler.load(run / "scaler.json")
        metrics_path = run / "metrics.json"
        meta = {"run_dir": str(run), "recipe": recipe.name, "model": recipe.model.name}
        if metrics_path.is_file():
            meta["test"] = json.loads(metrics_path.read_text()).get("test")
        pipeline = cls(
            history=info.history,
            horizon=info.horizon,
            name=recipe.name or recipe.model.name,
            model=model,
            scaler=scaler,
            info=info,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            meta={**meta, "manifest": (run / MANIFEST).is_file()},
        )
        pipeline.recipe, pipeline.run_dir, pipeline.backbone = recipe, run, backbone
        pipeline.sampler = sampler
        if getattr(model, "window_forecaster", False):  # a fine-tuned LM: prompts, decoding
            pipeline.forecaster = model
        if sampler is not None:
            sampler.to(pipeline.device).eval()
        return pipeline

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        history: int = 12,
        horizon: int = 12,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        batch_size: int | str = "auto",
        **forecaster_kwargs: Any,
    ) -> ForecastPipeline:
        """A causal LM forecasting zero-shot (:class:`~llm_st.zeroshot.ZeroShotForecaster`).

        ``forecaster_kwargs`` go to the forecaster (``template``, ``num_samples``,
        ``temperature``, ``top_p``, ``seed``, ...); ``batch_size`` is series per
        ``generate`` call.
        """
        from llm_st.zeroshot import ZeroShotForecaster

        forecaster = ZeroShotForecaster.from_pretrained(
            model,
            dtype=None if dtype in (None, "float32") else dtype,
            device=resolve_device(device),
            batch_size=batch_size,
            **forecaster_kwargs,
        )
        return cls(
            history=history,
            horizon=horizon,
            name=f"zero-shot {model}",
            forecaster=forecaster,
            device=device,
            meta={"model": str(model)},
        )

    @classmethod
    def from_method(
        cls,
        name: str,
        history: int = 12,
        horizon: int = 12,
        device: str | torch.device | None = None,
        **params: Any,
    ) -> ForecastPipeline:
        """A non-learned baseline (``learned = False`` methods) by its registry name.

        It is fit (:meth:`fit`) on the training rows given, else on the rows up to the first
        cut-off of each :meth:`predict` call, with a global z-score fit on those rows.
        ``device``: as in :meth:`from_run`; ``params`` go to the method.
        """
        cls_ = get_model_class(name)
        if cls_.learned:
            raise ConfigError(
                f"{name!r} is trained by gradient descent, so it needs a run",
                "train it with llm-st train and load the run with from_run, or use one of "
                "the non-learned methods",
            )
        return cls(
            history=history, horizon=horizon, name=name, method=(name, params), device=device
        )

    # ------------------------------------------------------------------ fitting
    def fit(self, train: DataLike, scaler: Scaler | None = None) -> ForecastPipeline:
        """Fit a baseline pipeline on training rows (``scaler``: fit on them when None)."""
        if self.method is None:
            raise ConfigError(
                f"{self.name} is already trained", "fit only pipelines built with from_method"
            )
        train = as_data(train)
        if scaler is None:
            scaler = make_scaler("standard", "global").fit(train.values, train.mask)
        name, params = self.method
        self.info = DataInfo.from_data(train, self.history, self.horizon)
        self.model = build_model(name, self.info, **params)
        self.model.fit_data(train, scaler)
        self.scaler = scaler
        self._place(self.model)
        self._fitted = True
        return self

    def _place(self, model: torch.nn.Module) -> None:
        # all of it, 4-bit weights too: bitsandbytes quantizes a backbone on the device it is
        # loaded to (the GPU when one is visible, llm_st.backbones.lora.quantized_device_map)
        # while the method's own layers are built on the CPU; packed weights move as they are
        model.to(self.device)
        model.eval()

    # ------------------------------------------------------------------ forecasting
    def predict(
        self,
        data: DataLike,
        at: Any = None,
        data_dir: str | Path | None = None,
        scaler: Scaler | None = None,
        num_samples: int = 0,
        quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
        progress: bool = True,
    ) -> Forecast:
        """Forecast the ``horizon`` steps after each cut-off.

        Parameters
        ----------
        data
            An :class:`STData`, a named dataset or file path, or an array ``[T(, N(, C))]``.
        at
            Cut-offs (last history step of each window): None for the last row (a forecast
            of the future), row numbers (negative counts from the end), or timestamps;
            one or a list.
        scaler
            Scale inputs with this instead of the pipeline's own (e.g. fit on another
            dataset's training split).
        num_samples
            Sample paths to draw, for a run trained with a probabilistic objective
            (``diffusion``): the forecast then holds ``samples``, ``quantiles`` at
            ``quantile_levels`` and their median as the point. The zero-shot path always
            samples (its ``num_samples`` is set when it is built).
        progress
            Show a progress bar when there are several batches.

        Returns
        -------
        Forecast
            ``point [W, H, N, C]`` on the original scale (W = number of cut-offs; samples
            and quantiles where the method draws them), ``target_times`` ``[W, H]``,
            ``cutoffs`` ``[W]``, ``target_start`` (row of each first forecast step).
        """
        data = as_data(data, data_dir)
        rows = cutoff_rows(data, at, self.history)
        if self.forecaster is not None:
            forecast = self.forecaster.forecast_windows(
                data, rows - self.history + 1, self.history, self.horizon, progress=progress
            )
            return forecast
        if num_samples and self.sampler is None:
            raise ConfigError(
                f"{self.name} gives point forecasts only, so it cannot draw {num_samples} samples",
                "train with a probabilistic objective (objective: diffusion), or use num_samples=0",
            )
        if self.method is not None and not self._fitted:
            self.fit(data.time_slice(0, int(rows.min()) + 1))
        model = self._model_for(data)
        scaler = scaler or self.scaler
        self._check_scaler(scaler, data)
        points, samples = [], []
        chunks = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        quiet = True if not progress or len(chunks) < 3 else None  # None: off unless a TTY
        for chunk in tqdm(chunks, desc="predict", disable=quiet):
            batch = history_batch(data, chunk, self.history, self.horizon, scaler)
            point, drawn = self._forward(model, batch, scaler, num_samples)
            points.append(point)
            samples.append(drawn)
        targets = rows[:, None] + 1 + np.arange(self.horizon)
        facts = {
            "target_times": step_times(data, targets),
            "cutoffs": step_times(data, rows),
            "target_start": rows + 1,
            "node_ids": list(data.node_ids),
            "channels": list(data.channels),
            "meta": {"model": self.name, "history": self.history, "horizon": self.horizon},
        }
        if num_samples:
            return Forecast.from_samples(np.concatenate(samples, 1), quantile_levels, **facts)
        return Forecast(point=np.concatenate(points), point_name="mean", **facts)

    @torch.inference_mode()
    def _forward(
        self, model: STModel, batch: dict[str, torch.Tensor], scaler: Scaler, num_samples: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``[B, H, N, C]`` point forecast and ``[S, B, H, N, C]`` samples (or None), both
        on the original scale."""
        device = next((p.device for p in model.parameters()), self.device)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        dtype = _DTYPES.get(self.dtype or "float32")
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with autocast:
            pred = model(batch).float()
            drawn = self.sampler.sample(model, batch, num_samples).float() if num_samples else None
        point = scaler.inverse_transform(pred).cpu().numpy()
        return point, None if drawn is None else scaler.inverse_transform(drawn).cpu().numpy()

    def _model_for(self, data: STData) -> STModel:
        """The model, rebuilt for data with another node count when its weights allow."""
        info = self.info
        if data.num_channels != info.num_channels:
            raise DataError(
                f"{self.name} was trained on {info.num_channels} channel(s) "
                f"{info.channels}, the data have {data.num_channels} {list(data.channels)}",
                "select the same channels (STData.select_channels) or train on these",
            )
        if data.num_nodes == info.num_nodes:
            if list(data.node_ids) != list(info.node_ids) and info.adjacency is not None:
                warnings.warn(
                    f"{data.name} has other node ids than the training data; the graph of the "
                    "training data is used",
                    stacklevel=3,
                )
            return self.model
        return self._rebuilt_for(data)

    def _rebuilt_for(self, data: STData) -> STModel:
        if self._other is not None and self._other[0] == data.num_nodes:
            return self._other[1]
        if self.recipe is None or self.run_dir is None:
            raise DataError(
                f"{self.name} was built for {self.info.num_nodes} nodes, the data have "
                f"{data.num_nodes}",
                "forecast data with the same nodes",
            )
        info = DataInfo.from_data(data, self.history, self.horizon)
        info.steps_per_day = self.info.steps_per_day
        try:
            model = build_from_recipe(self.recipe, info, self.backbone, self.run_dir)
            load_model(model, self.run_dir)
        except (RuntimeError, ModelLoadError) as exc:
            raise DataError(
                f"{self.name} has weights per node for the {self.info.num_nodes} nodes it was "
                f"trained on, the data have {data.num_nodes}",
                "forecast the same nodes, or use a node-agnostic method (patch models, "
                "GPT4TS, Time-LLM, DLinear)",
            ) from exc
        self._place(model)
        self._other = (data.num_nodes, model)
        return model

    def _check_scaler(self, scaler: Scaler | None, data: STData) -> None:
        if scaler is None:
            raise ConfigError(f"{self.name} has no scaler", "load it with from_run")
        rows, cols = scaler.shift.shape
        if rows not in (1, data.num_nodes) or cols not in (1, data.num_channels):
            raise DataError(
                f"the scaler holds statistics for {rows} nodes x {cols} channels, the data "
                f"have {data.num_nodes} x {data.num_channels}",
                "forecast data of the training shape, or pass a scaler fit on these data",
            )

    def predict_df(
        self,
        df: pd.DataFrame,
        id_column: str = "unique_id",
        timestamp_column: str = "ds",
        target: str = "y",
        freq: str | None = None,
    ) -> pd.DataFrame:
        """Forecast every series of a long data frame after its last timestamp.

        Returns the long format: one row per series and future time step, columns
        ``unique_id``, ``ds``, ``cutoff``, the point forecast (``mean`` or ``median``) and
        ``q0.1``, ... where the method has quantiles.
        """
        from llm_st.data import load_long_frame

        data = load_long_frame(df, id_column, timestamp_column, target, freq=freq)
        frame = self.predict(data).to_frame()
        return frame.rename(columns={"unique_id": id_column, "ds": timestamp_column})

    def __repr__(self) -> str:
        return (
            f"ForecastPipeline({self.name!r}, history={self.history}, horizon={self.horizon}, "
            f"device={self.device})"
        )


def build_from_recipe(
    recipe: Recipe, info: DataInfo, backbone: str | None = None, run: Path | None = None
) -> STModel:
    """The model of ``recipe`` for ``info``; ``backbone`` replaces the recorded backbone
    source. A relative source that names a model directory inside ``run`` (an exported
    run's ``backbone/``) is read from there. (No seeding is needed: every tensor not re-read
    from a pretrained source is in the run's weights.)"""
    spec = None if recipe.model.backbone is None else dict(recipe.model.backbone)
    if backbone is not None:
        spec = {**(spec or {}), "source": backbone}
    source = None if spec is None else spec.get("source")
    if run is not None and source and not Path(source).is_absolute():
        inside = run / source
        if (inside / "config.json").is_file():
            spec["source"] = str(inside)
    return build_model(recipe.model.name, info, backbone=spec, **recipe.model.params)


OUTPUT_FORMATS = (".csv", ".parquet", ".npz")


def check_output(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` as a forecast output: a known extension, and no file there unless
    ``overwrite``."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise ConfigError(
            f"cannot write forecasts to {str(path)!r} (extension {path.suffix or 'none'})",
            f"use one of {', '.join(OUTPUT_FORMATS)}",
        )
    if path.exists() and not overwrite:
        raise ConfigError(
            f"{path} already exists", "pass --overwrite to replace it, or choose another --out"
        )
    if not path.parent.is_dir():
        raise ConfigError(f"folder {str(path.parent)!r} does not exist", "create it first")
    return path


def write_forecast(forecast: Forecast, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``forecast`` by extension: ``.csv`` / ``.parquet`` in the long format
    (:meth:`Forecast.to_frame`), ``.npz`` (:meth:`Forecast.save`); atomically."""
    path = check_output(path, overwrite)
    suffix = path.suffix.lower()
    tmp = path.with_name(f".{path.name}.tmp{suffix}")
    try:
        if suffix == ".npz":
            forecast.save(tmp)
        elif suffix == ".csv":
            forecast.to_frame().to_csv(tmp, index=False)
        else:
            forecast.to_frame().to_parquet(tmp, index=False)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
