"""``llm-st zero-shot``: forecast a dataset with a causal LM, score it, write the results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_st.errors import ConfigError
from llm_st.pipeline.evaluate import evaluate_pipeline
from llm_st.pipeline.forecast import ForecastPipeline, as_data

OUTPUTS = ("metrics.json", "forecast.npz", "forecast.csv")


def run_zero_shot(
    model: str | Path,
    dataset: str,
    out: str | Path,
    template: str = "plain",
    num_samples: int = 10,
    max_windows: int | None = None,
    history: int = 12,
    horizon: int = 12,
    nodes: Sequence[int | str] | None = None,
    part: str = "test",
    data_dir: str | None = None,
    overwrite: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int | str = "auto",
    **forecaster_kwargs: Any,
) -> dict[str, Any]:
    """Forecast ``part`` of ``dataset`` with ``model`` zero-shot and write ``out``:
    ``metrics.json`` (:func:`evaluate_pipeline`'s result), ``forecast.npz``
    (:meth:`Forecast.save`) and ``forecast.csv`` (:meth:`Forecast.to_frame`).

    ``nodes`` (indices or ids) restricts the forecast to those nodes. Returns the metrics.
    """
    from llm_st.prompting.context import node_indices

    out = Path(out)
    taken = [name for name in OUTPUTS if (out / name).exists()]
    if taken and not overwrite:
        raise ConfigError(
            f"{out} already holds {', '.join(taken)}",
            "pass --overwrite to replace them, or choose another --out",
        )
    data = as_data(dataset, data_dir)
    if nodes is not None:
        data = data.select_nodes(node_indices(data, nodes))
    pipeline = ForecastPipeline.from_pretrained(
        model,
        history=history,
        horizon=horizon,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        template=template,
        num_samples=num_samples,
        **forecaster_kwargs,
    )
    result, forecast = evaluate_pipeline(pipeline, data, part, max_windows=max_windows)
    result.update(model=str(model), dataset=dataset)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    forecast.save(out / "forecast.npz")
    forecast.to_frame().to_csv(out / "forecast.csv", index=False)
    return result
