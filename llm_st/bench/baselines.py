"""The primitive baselines on their standard recipes, each seed in its own run directory.

:func:`run_baselines` runs :func:`llm_st.engine.train` on
``alignment/<model>/<dataset>/config.yaml`` (see :mod:`llm_st.bench.recipes`) for every
baseline with a recipe for the dataset, once per seed for the learned ones, and averages
the seeds with :func:`~llm_st.bench.seeds.mean_over_seeds`;
:func:`llm_st.bench.report.baseline_report` prints the result. ``scripts/bench_baselines.py``
is its command line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_st.bench.seeds import mean_over_seeds
from llm_st.config import load_recipe, recipes_root
from llm_st.data import load
from llm_st.engine import train
from llm_st.errors import DataNotFoundError
from llm_st.models.registry import get_model_class

GROUPS = {
    "ett": ("ETTh1", "ETTh2"),
    "graph": ("LosLoop", "SZ-taxi"),
    "synthetic": ("synthetic-traffic",),
}
# the baselines, in the order of the tables: not learned first, then by capacity
ORDER = (
    "last_value",
    "seasonal_naive",
    "historical_average",
    "var",
    "dlinear",
    "nlinear",
    "patchtst",
    "pattn",
    "stid",
    "graph_wavenet",
    "stgcn",
)


@dataclass
class BaselineResult:
    """The baselines of one dataset.

    Attributes
    ----------
    dataset : str
        Folder of the recipes (``alignment/<model>/<dataset>/``).
    rows : list of dict
        One per model, in :data:`ORDER`: the seeds of :func:`llm_st.engine.train`
        averaged by :func:`~llm_st.bench.seeds.mean_over_seeds`, plus ``history`` and
        ``horizon`` of its recipe and ``run_dirs`` (one per seed).
    skipped : str or None
        Why the dataset was not run (no recipe, no data files); None when it was.
    """

    dataset: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None


def expand_groups(items: Sequence[str]) -> list[str]:
    """Dataset names of ``items``, each a group of :data:`GROUPS` (any case) or a name."""
    return [d for item in items for d in GROUPS.get(item.lower(), (item,))]


def find_recipes(
    dataset: str, models: Sequence[str] | None = None, root: Path | None = None
) -> list[Path]:
    """``<root>/<model>/<dataset>/config.yaml`` of the baselines of :data:`ORDER` (or of
    ``models``, those outside it last) that have one; ``root``: :func:`recipes_root`."""
    root = root or recipes_root()
    paths = {p.parts[-3]: p for p in root.glob(f"*/{dataset}/config.yaml")}
    rank = {m: i for i, m in enumerate(ORDER)}
    wanted = ORDER if models is None else sorted(models, key=lambda m: rank.get(m, len(ORDER)))
    return [paths[m] for m in wanted if m in paths]


def run_baselines(
    datasets: Sequence[str],
    out: str | Path,
    models: Sequence[str] | None = None,
    seeds: int = 1,
    overrides: Sequence[str] = (),
    data_dir: str | None = None,
    recipes: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Iterator[BaselineResult]:
    """Run the baselines of each dataset; yield its :class:`BaselineResult` when done.

    Parameters
    ----------
    datasets
        Recipe folders (see :func:`expand_groups`).
    out
        Parent of the run directories ``out/<dataset>/<model>/seed<k>`` (which must not
        hold results).
    models
        Registry names to run (default: every baseline of :data:`ORDER` with a recipe).
    seeds
        Seeds ``0 .. seeds-1`` of each learned model; one run for the others.
    overrides
        ``section.key=value`` items applied to every recipe (e.g. ``training.epochs=1``,
        ``data.spec=...``).
    data_dir
        Data root (default: the recipe's, then ``$LLM_ST_DATA``, then the user's cache).
    recipes
        Folder of the recipes (default: :func:`recipes_root`).
    progress
        Called with one line per finished run.
    """
    root = recipes or recipes_root()
    for dataset in datasets:
        paths = find_recipes(dataset, models, root)
        if not paths:
            yield BaselineResult(
                dataset, skipped=f"no recipes under {root}/*/{dataset}/ for these models"
            )
            continue
        first = load_recipe(paths[0], overrides).data
        try:  # once for all recipes of the dataset
            data = load(first.spec, data_dir=data_dir or first.data_dir)
        except DataNotFoundError as exc:
            yield BaselineResult(dataset, skipped=f"skipped, data not found ({exc})")
            continue
        rows = []
        for path in paths:
            runs = []
            recipe = load_recipe(path, overrides)
            for seed in range(seeds if get_model_class(recipe.model.name).learned else 1):
                recipe = load_recipe(path, [*overrides, f"training.seed={seed}"])
                run = train(
                    recipe, Path(out) / dataset / recipe.model.name / f"seed{seed}", data=data
                )
                runs.append(run)
                if progress is not None:
                    progress(
                        f"  {dataset} {recipe.model.name} seed {seed}: avg MAE "
                        f"{run['test']['avg']['mae']:.4f}, MSE {run['test']['avg']['mse']:.4f}, "
                        f"train {run['train_time_s']:.0f}s, total {run['total_time_s']:.0f}s"
                    )
            row = mean_over_seeds(runs)
            del row["run_dir"]
            rows.append(
                {
                    **row,
                    "history": recipe.data.history,
                    "horizon": recipe.data.horizon,
                    "run_dirs": [r["run_dir"] for r in runs],
                }
            )
        yield BaselineResult(dataset, rows)
