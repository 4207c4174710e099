"""Named benchmark datasets and the one entry point :func:`load`.

Each :class:`DatasetSpec` says where a benchmark's files lie under the data root
(``<root>/<folder>/<file>`` with the files' published names), which file format
(:mod:`llm_st.data.formats`) reads its main file, and the evaluation protocol the
field uses for it: split, scaler and the scale metrics are computed on.

The data root is, in order: the ``data_dir`` argument (the CLI's ``--data-dir``),
the environment variable ``LLM_ST_DATA``, and the per-user folder
``$XDG_CACHE_HOME/llm-st/data`` (``~/.cache/llm-st/data`` when ``XDG_CACHE_HOME``
is unset).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from llm_st.data.container import STData
from llm_st.data.formats import get_format, load_file
from llm_st.data.formats._common import (
    SOURCE_ASTGCN,
    SOURCE_DCRNN,
    SOURCE_ETT,
    SOURCE_SZ_TAXI,
    SOURCE_TGCN,
)
from llm_st.errors import ConfigError, DataError, DataNotFoundError

log = logging.getLogger("llm_st")

ENV_VAR = "LLM_ST_DATA"

# scaler settings of the two evaluation protocols (arguments of llm_st.data.scalers.make_scaler)
GRAPH_SCALER = {"kind": "standard", "axis": "global", "use_mask": False}
SERIES_SCALER = {"kind": "standard", "axis": "node", "use_mask": True}


@dataclass(frozen=True)
class SplitSpec:
    """A chronological split, as ratios or as explicit row counts.

    Exactly one of the two is set; :meth:`as_kwargs` gives the arguments of
    :func:`llm_st.data.splits.chronological_split`.

    Attributes
    ----------
    ratios
        ``(train, val, test)`` fractions of the rows, e.g. ``(0.7, 0.1, 0.2)``.
    borders
        ``(n_train, n_val, n_test)`` rows taken from the start: train is rows
        ``[0, n_train)``, val ``[n_train, n_train + n_val)``, test the next ``n_test``.
    """

    ratios: tuple[float, float, float] | None = None
    borders: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if (self.ratios is None) == (self.borders is None):
            raise ConfigError(
                "a split needs exactly one of ratios or borders",
                "e.g. SplitSpec(ratios=(0.7, 0.1, 0.2))",
            )
        if self.ratios is not None:
            ratios = tuple(float(r) for r in self.ratios)
            if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-9:
                raise ConfigError(
                    f"split ratios {ratios} are not three non-negative fractions summing to 1",
                    "use e.g. (0.7, 0.1, 0.2)",
                )
            object.__setattr__(self, "ratios", ratios)
        else:
            borders = tuple(int(b) for b in self.borders)
            if len(borders) != 3 or min(borders) <= 0:
                raise ConfigError(
                    f"split borders {borders} are not three positive row counts",
                    "use e.g. (8640, 2880, 2880)",
                )
            object.__setattr__(self, "borders", borders)

    def as_kwargs(self) -> dict[str, tuple]:
        """``{"ratios": ...}`` or ``{"borders": ...}``, for ``chronological_split(T, **kwargs)``."""
        return {"ratios": self.ratios} if self.ratios is not None else {"borders": self.borders}


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to load a named benchmark and evaluate on it like the literature.

    Attributes
    ----------
    name
        Registry name (looked up case-insensitively).
    files
        Role -> path relative to the data root. Role ``data`` is the main file; every
        other role is the keyword argument of the format's loader that takes that file
        (``adj_pkl_path``, ``locations_csv``, ``distance_csv``, ``adj_csv``).
    format
        Name of the file format (:func:`llm_st.data.formats.list_formats`) that reads
        the main file; its loader also gets ``freq``, ``null_value``, ``name``,
        ``description`` and, when set, ``start``.
    freq
        Step between rows (pandas frequency string).
    start
        First timestamp, for files that carry no timestamps (``None`` for those that do).
    split
        Chronological split on the raw series (:class:`SplitSpec`).
    null_value
        Value that means "missing" (masked in scaler fits with ``use_mask`` and in metrics).
    description
        Free text for prompts and reports.
    scaler
        Arguments of :func:`llm_st.data.scalers.make_scaler` (read-only mapping).
    metric_scale
        ``"original"`` (metrics on de-normalized values) or ``"normalized"``.
    source
        Where the files are published, for "not found" messages.
    optional
        Roles that may be absent (loaded without them, with a log message).
    hf_repo
        Hugging Face dataset repository that holds the files of the dataset's folder at
        its top level, if one is known; "not found" messages then show the
        ``hf download`` command that fetches them.
    """

    name: str
    files: Mapping[str, str] = field(hash=False)
    format: str
    freq: str
    start: str | None
    split: SplitSpec
    null_value: float | None
    description: str
    scaler: Mapping[str, Any] = field(default_factory=lambda: dict(GRAPH_SCALER), hash=False)
    metric_scale: str = "original"
    source: str = ""
    optional: tuple[str, ...] = ()
    hf_repo: str | None = None

    def __post_init__(self) -> None:
        if self.metric_scale not in ("original", "normalized"):
            raise ConfigError(
                f"{self.name}: metric_scale {self.metric_scale!r} is unknown",
                "use 'original' or 'normalized'",
            )
        if "data" not in self.files:
            raise ConfigError(
                f"{self.name}: files {dict(self.files)} have no 'data' role",
                "name the main file {'data': '<folder>/<file>', ...}",
            )
        try:
            get_format(self.format)
        except ConfigError as exc:
            raise ConfigError(f"{self.name}: {exc.problem}", exc.fix) from None
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))
        object.__setattr__(self, "scaler", MappingProxyType(dict(self.scaler)))

    def protocol(self) -> dict[str, Any]:
        """Split, scaler and metric scale as plain JSON data.

        :func:`load` stores it as ``extras["protocol"]``, where
        :func:`llm_st.data.task.prepare_task` takes its defaults from.
        """
        split = {key: list(value) for key, value in self.split.as_kwargs().items()}
        return {**split, "scaler": dict(self.scaler), "metric_scale": self.metric_scale}


# --------------------------------------------------------------------------- registry
_TRAFFIC_SPLIT = SplitSpec(ratios=(0.7, 0.1, 0.2))


def _ett(name: str) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        files={"data": f"ETT/{name}.csv"},
        format="ett_csv",
        freq="h",
        start=None,  # the CSV carries its timestamps, hourly from 2016-07-01 00:00
        # 12/4/4 months of 30-day hourly rows (Informer); the last 2,900 rows are unused
        split=SplitSpec(borders=(8640, 2880, 2880)),
        null_value=None,
        description=(
            f"{name}: Electricity Transformer Temperature, one transformer station in China, "
            "hourly from 2016-07-01, 17,420 rows. Six power-load variables (HUFL, HULL: high "
            "useful/useless load; MUFL, MULL: middle; LUFL, LULL: low) and the oil temperature "
            "OT, each a node with one channel."
        ),
        scaler=SERIES_SCALER,
        metric_scale="normalized",
        source=SOURCE_ETT,
    )


def _dcrnn(name: str, folder: str, h5: str, pkl: str, locations: str, text: str) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        files={
            "data": f"{folder}/{h5}",
            "adj_pkl_path": f"{folder}/{pkl}",
            "locations_csv": f"{folder}/{locations}",
        },
        format="dcrnn_h5",
        freq="5min",
        start=None,  # the HDF5 frame carries its timestamps
        split=_TRAFFIC_SPLIT,
        null_value=0.0,
        description=text,
        source=SOURCE_DCRNN,
        optional=("locations_csv",),
    )


def _pems(name: str, start: str, text: str) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        files={"data": f"{name}/{name}.npz", "distance_csv": f"{name}/distance.csv"},
        format="pems_npz",
        freq="5min",
        start=start,
        split=SplitSpec(ratios=(0.6, 0.2, 0.2)),
        null_value=0.0,
        description=text,
        source=SOURCE_ASTGCN,
    )


REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _ett("ETTh1"),
        _ett("ETTh2"),
        DatasetSpec(
            name="LosLoop",
            files={"data": "LosLoop/los_speed.csv", "adj_csv": "LosLoop/los_adj.csv"},
            format="wide_csv",
            freq="5min",
            # T-GCN (Zhao et al., 2019): "speed from Mar. 1 to Mar. 7, 2012"; 2,016 = 7 x 288
            start="2012-03-01 00:00",
            # the source papers use 80/20 train/test; 70/10/20 leaves a validation part
            split=_TRAFFIC_SPLIT,
            null_value=None,  # imputed, no zeros
            description=(
                "LosLoop: loop-detector speeds (mph) of 207 highway sensors in Los Angeles County "
                "(the METR-LA sensors), one week from 2012-03-01, every 5 minutes, imputed."
            ),
            source=SOURCE_TGCN,
        ),
        DatasetSpec(
            name="SZ-taxi",
            files={"data": "SZ-taxi/SZ_taxi.npz", "adj_csv": "SZ-taxi/sz_adj.csv"},
            format="sz_taxi",
            freq="15min",
            start="2015-01-01 00:00",
            split=_TRAFFIC_SPLIT,  # 80/20 in T-GCN; 70/10/20 here for model selection
            null_value=0.0,  # zeros are intervals without a taxi (see formats.sz_taxi.load_sz_taxi)
            description=(
                "SZ-taxi: taxi speeds (km/h) on 156 major roads of Luohu district, Shenzhen, "
                "January 2015, every 15 minutes; 0 means no taxi was observed (missing)."
            ),
            # zeros are missing and a quarter of all entries: they are kept out of the z-score
            scaler={"kind": "standard", "axis": "global", "use_mask": True},
            source=f"data: {SOURCE_SZ_TAXI}; graph: {SOURCE_TGCN}",
        ),
        _dcrnn(
            "METR-LA",
            "METR-LA",
            "metr-la.h5",
            "adj_mx.pkl",
            "graph_sensor_locations.csv",
            "METR-LA: traffic speed (mph) from 207 loop detectors on the highways of Los Angeles "
            "County, 2012-03-01 to 2012-06-30, every 5 minutes; 0 means missing.",
        ),
        _dcrnn(
            "PEMS-BAY",
            "PEMS-BAY",
            "pems-bay.h5",
            "adj_mx_bay.pkl",
            "graph_sensor_locations_bay.csv",
            "PEMS-BAY: traffic speed (mph) from 325 Caltrans PeMS sensors in the San Francisco Bay "
            "Area, 2017-01-01 to 2017-05-31, every 5 minutes; 0 means missing.",
        ),
        _pems(
            "PEMS04",
            "2018-01-01",
            "PEMS04: Caltrans PeMS district 4 (San Francisco Bay Area), 307 detectors, "
            "2018-01-01 to 2018-02-28, every 5 minutes; channels flow (vehicles per 5 minutes), "
            "occupancy and speed; 0 means missing.",
        ),
        _pems(
            "PEMS08",
            "2016-07-01",
            "PEMS08: Caltrans PeMS district 8 (San Bernardino), 170 detectors, 2016-07-01 to "
            "2016-08-31, every 5 minutes; channels flow (vehicles per 5 minutes), occupancy and "
            "speed; 0 means missing.",
        ),
    )
}


def list_datasets() -> list[str]:
    """Names of the registered datasets."""
    return list(REGISTRY)


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` called ``name`` (case-insensitive)."""
    for key, spec in REGISTRY.items():
        if key.lower() == name.strip().lower():
            return spec
    raise DataError(
        f"unknown dataset {name!r}",
        f"use one of {', '.join(REGISTRY)}, a synthetic name or a file path",
    )


# --------------------------------------------------------------------------- resolution
def default_data_dir() -> Path:
    """The per-user data root: ``$XDG_CACHE_HOME/llm-st/data``, else ``~/.cache/llm-st/data``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG base directory specification asks.
    """
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if cache and Path(cache).is_absolute() else Path.home() / ".cache"
    return base / "llm-st" / "data"


def _root_and_origin(data_dir: str | Path | None) -> tuple[Path, str]:
    """The data root and, for messages, where it came from."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "given by data_dir / --data-dir"
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser(), f"given by ${ENV_VAR}"
    return default_data_dir(), f"the default, as neither --data-dir nor ${ENV_VAR} is set"


def data_root(data_dir: str | Path | None = None) -> Path:
    """The folder the named datasets are looked up in.

    ``data_dir`` if given, else ``$LLM_ST_DATA``, else :func:`default_data_dir`.
    """
    return _root_and_origin(data_dir)[0]


def locate_files(spec: DatasetSpec, data_dir: str | Path | None = None) -> dict[str, Path | None]:
    """The absolute path of each of ``spec``'s files under :func:`data_root`.

    Returns
    -------
    dict
        Role -> path; ``None`` for a missing optional file.

    Raises
    ------
    DataNotFoundError
        If a required file is missing; the message names the folder looked in and why,
        the missing files, where they are published and where to put them.
    """
    root, origin = _root_and_origin(data_dir)
    paths = {role: root / rel for role, rel in spec.files.items()}
    missing = [role for role, p in paths.items() if not p.is_file() and role not in spec.optional]
    if missing:
        folder = spec.files[missing[0]].split("/")[0]
        download = (
            f" (hf download {spec.hf_repo} --repo-type dataset --local-dir {root / folder})"
            if spec.hf_repo
            else ""
        )
        raise DataNotFoundError(
            f"dataset {spec.name}: {', '.join(spec.files[r] for r in missing)} not found in "
            f"{root} ({origin})",
            f"{spec.source}; place them at {', '.join(str(paths[r]) for r in missing)}{download}, "
            f"or point --data-dir / ${ENV_VAR} at the folder that holds {folder}/",
        )
    for role, p in paths.items():
        if not p.is_file():
            log.info("%s: optional %s file %s not found, loading without it", spec.name, role, p)
    return {role: p if p.is_file() else None for role, p in paths.items()}


# --------------------------------------------------------------------------- entry point
def _parse_params(text: str) -> dict[str, Any]:
    """``"num_nodes=20,seed=1,trend=false"`` -> ``{"num_nodes": 20, "seed": 1, "trend": False}``."""
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"synthetic parameter {item!r} is not key=value",
                "write e.g. synthetic-traffic:num_nodes=20,seed=1",
            )
        raw = raw.strip()
        value: Any
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for cast in (int, float, str):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    continue
        params[key.strip()] = value
    return params


def _looks_like_path(spec: str) -> bool:
    return Path(spec).suffix != "" or os.sep in spec or "/" in spec


def _load_named(spec: DatasetSpec, data_dir: str | Path | None, kwargs: dict[str, Any]) -> STData:
    """Read ``spec``'s files with its format; ``kwargs`` override the spec's values."""
    files = locate_files(spec, data_dir)
    args: dict[str, Any] = {"freq": spec.freq, "null_value": spec.null_value}
    if spec.start is not None:
        args["start"] = spec.start
    args.update(
        {role: path for role, path in files.items() if role != "data" and path is not None},
        name=spec.name,
        description=spec.description,
    )
    data = load_file(files["data"], format=spec.format, **{**args, **kwargs})
    data.extras["spec"] = spec.name
    data.extras["protocol"] = spec.protocol()
    return data


def load(
    spec: str | Path | DatasetSpec, data_dir: str | Path | None = None, **kwargs: Any
) -> STData:
    """Load a named benchmark, a synthetic dataset or a file.

    Parameters
    ----------
    spec
        One of

        - a registered name (:func:`list_datasets`, case-insensitive) or a
          :class:`DatasetSpec`, read from :func:`data_root`; the result has
          ``extras["spec"] = <name>`` and ``extras["protocol"]``
          (:meth:`DatasetSpec.protocol`);
        - a synthetic name, optionally with parameters:
          ``"synthetic-traffic"``, ``"synthetic-grid:height=8,width=8,seed=1"``
          (see :mod:`llm_st.data.synthetic`);
        - a file path, read by :func:`llm_st.data.formats.load_file` (``format=<name>``
          in ``kwargs`` forces a format).
    data_dir
        Data root for named datasets (default: see :func:`data_root`).
    kwargs
        Passed to the loader (e.g. ``drop_empty_nodes=True``) or, for synthetic data,
        to the generator (overriding parameters in ``spec``).

    Returns
    -------
    STData
        ``values`` ``[T, N, C]``.
    """
    if isinstance(spec, DatasetSpec):
        return _load_named(spec, data_dir, kwargs)
    text = str(spec).strip()
    if isinstance(spec, str) and text.lower() in {name.lower() for name in REGISTRY}:
        return _load_named(get_spec(text), data_dir, kwargs)
    if isinstance(spec, str) and text.lower().startswith("synthetic"):
        from llm_st.data.synthetic import SYNTHETIC_NAMES, generate

        name, _, params = text.partition(":")
        name = name.strip().lower()
        if name not in SYNTHETIC_NAMES:
            raise DataError(
                f"unknown synthetic dataset {name!r}", f"use one of {', '.join(SYNTHETIC_NAMES)}"
            )
        return generate(name, **{**_parse_params(params), **kwargs})
    path = Path(text).expanduser()
    if path.is_file() or _looks_like_path(text):
        return load_file(path, **kwargs)
    raise DataError(
        f"unknown dataset {text!r}: not a registered name and no such file",
        f"use one of {', '.join(REGISTRY)}, a synthetic name or the path of a data file",
    )
