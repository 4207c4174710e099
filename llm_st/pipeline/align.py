"""``llm-st align``: train an ST encoder into a frozen text space with the engine, then report.

The run is an ordinary engine run: :func:`~llm_st.data.task.prepare_task` fixes the
split and the scaler, the :mod:`alignment objective <llm_st.objectives.alignment>`
is what :class:`~llm_st.engine.Trainer` minimizes (best weights on the validation
loss, checkpoints and resume in the run directory), and the
:class:`~llm_st.crossmodal.report.AlignmentReport` is measured on evenly spaced
windows of the test split, never seen in training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from llm_st.backbones.text_encoder import FrozenTextEncoder, text_encoder_from_spec
from llm_st.config import TrainingConfig
from llm_st.crossmodal.encoders import AlignedSTEncoder, build_st_encoder
from llm_st.crossmodal.report import AlignmentReport, score_alignment
from llm_st.data import load
from llm_st.data.task import ForecastTask, prepare_task
from llm_st.engine import Trainer, open_run_dir, seed_everything
from llm_st.engine.accel import make_accelerator, resolve_device
from llm_st.models.base import DataInfo, STModel
from llm_st.objectives import build_objective
from llm_st.objectives.alignment import AlignmentConfig

logger = logging.getLogger("llm_st")


def alignment_training(
    steps: int = 300, batch_size: int = 16, seed: int = 0, device: str = "auto"
) -> TrainingConfig:
    """The optimization of ``llm-st align``.

    AdamW (learning rate 1e-3, weight decay 0.01) with cosine decay over ``steps``
    optimizer steps of ``batch_size`` windows, no gradient clipping, an evaluation
    every epoch and no early stopping: runs compared at the same budget train the same
    number of steps; the weights with the best validation loss are kept. ``device``:
    ``auto`` (the GPU when there is one), ``cpu`` or ``cuda``.
    """
    return TrainingConfig(
        max_steps=steps,
        batch_size=batch_size,
        lr=1e-3,
        weight_decay=0.01,
        grad_clip=None,
        patience=None,
        seed=seed,
        device=device,
    )


@torch.no_grad()
def _embed(
    aligned: AlignedSTEncoder, batches: list[dict[str, torch.Tensor]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected ``[P, D_text]`` and encoder ``[P, D_st]`` embeddings of ``batches``' pairs."""
    projected, encoded = [], []
    for batch in batches:
        h = aligned.embed({k: v.to(device) for k, v in batch.items()})
        encoded.append(h.reshape(-1, h.shape[-1]).float().cpu())
        z = torch.nn.functional.normalize(aligned.projection(h), dim=-1)
        projected.append(z.reshape(-1, z.shape[-1]).float().cpu())
    return torch.cat(projected), torch.cat(encoded)


def align(
    task: ForecastTask,
    config: AlignmentConfig | None = None,
    encoder: str | STModel = "patch",
    training: TrainingConfig | None = None,
    *,
    text_model: FrozenTextEncoder | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    eval_windows: int = 64,
    paraphrases: bool = True,
) -> tuple[AlignedSTEncoder, AlignmentReport]:
    """Train ``encoder`` + projection against frozen text targets on ``task``; report.

    Parameters
    ----------
    task : ForecastTask
        Windows of ``task.history`` steps; its training split trains, its validation
        split selects the best weights, its test split is reported on.
    config : AlignmentConfig, optional
        The objective (text encoder, targets, projection, temperature, ...).
    encoder : "patch", a registered model name, or an STModel with ``embed``
        The ST encoder (see :func:`~llm_st.crossmodal.encoders.build_st_encoder`).
    training : TrainingConfig, optional
        Default :func:`alignment_training`; its seed also seeds the initialization.
    text_model : FrozenTextEncoder, optional
        An already loaded text encoder, used instead of building ``config.text_encoder``.
    run_dir : str or Path, optional
        The engine's run directory (checkpoints, weights, log). Its earlier results are
        replaced, unless ``resume``: then the run continues from its latest checkpoint.
    on_step : callable, optional
        Called with the optimizer step count after every step (see :class:`Trainer`).
    eval_windows : int
        At most this many evenly spaced test windows are reported on.
    paraphrases : bool
        Also report retrieval against the held-out descriptions in other words
        (description targets only).

    Returns
    -------
    model : AlignedSTEncoder
        ``model(batch) -> [B, N, D_text]`` normalized, in the text space.
    report : AlignmentReport
    """
    config = config or AlignmentConfig()
    training = training or alignment_training()
    acc = make_accelerator(training)
    run = None if run_dir is None else open_run_dir(run_dir, acc, resume, overwrite=not resume)
    seed_everything(training.seed)
    info = DataInfo.from_data(task.data, task.history, task.horizon)
    model, name = build_st_encoder(encoder, info)
    objective = build_objective(
        "alignment",
        info,
        model,
        task=task,
        text_model=text_model,
        **dataclasses.asdict(config),
    )
    trainer = Trainer(model, objective, task, training, run, on_step=on_step, accelerator=acc)
    trainer.fit(resume=resume)

    aligned = objective.aligned(model).eval()
    held_out = task.dataset("test")
    picked = np.unique(np.linspace(0, len(held_out) - 1, eval_windows).round().astype(int))
    size = training.eval_batch_size
    batches = [held_out[picked[lo : lo + size]] for lo in range(0, len(picked), size)]
    projected, encoded = _embed(aligned, batches, acc.device)
    starts = held_out.index.starts[picked]
    targets, groups = objective.targets(starts, task.history)
    paraphrased = None
    if paraphrases and config.targets == "descriptions":
        paraphrased = objective.targets(starts, task.history, "paraphrase")[0]
    report = AlignmentReport(
        text_encoder=objective.text.name,
        st_encoder=name,
        targets=config.targets,
        steps=trainer.state.step,
        seed=training.seed,
        train_pairs=len(task.dataset("train")) * task.data.num_nodes,
        final_loss=trainer.history[-1]["train_loss"],
        temperature=float(objective.temperature.detach()),
        **score_alignment(projected, encoded, targets, groups, paraphrased),
    )
    logger.info("alignment with %s:\n%s", objective.text.name, report.format())
    return aligned, report


def run_alignment(
    spec: str,
    text_encoder: str = "minilm",
    encoder: str = "patch",
    steps: int = 300,
    batch_size: int = 16,
    history: int = 24,
    seed: int = 0,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    *,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    device: str = "auto",
) -> tuple[AlignmentReport, Path | None]:
    """``llm-st align``: load ``spec``, :func:`align` with defaults, write ``out/alignment.json``.

    The task is the dataset's standard split and scaler with windows of ``history``
    steps (training windows every ``history // 4`` steps). With ``out``, ``out`` is
    the engine's run directory (``resume`` continues an interrupted run there) and
    the text embeddings are cached in ``out/text_embeddings-<hash of the encoder
    spec>.safetensors`` (rewritten when new texts were encoded, also when the run is
    interrupted), so a second run over the same data encodes nothing. The text encoder and
    the training run on ``device`` (``auto``: the GPU when there is one).

    Returns the report and the path of the JSON file (``None`` without ``out``).
    """
    cache_path = None
    if out is not None:
        tag = hashlib.sha256(str(text_encoder).encode("utf-8")).hexdigest()[:12]
        cache_path = Path(out) / f"text_embeddings-{tag}.safetensors"
    text_model = text_encoder_from_spec(
        text_encoder, cache_path=cache_path, device=resolve_device(device)
    )
    data = load(spec, data_dir=data_dir)
    task = prepare_task(data, history, 1, stride=max(1, history // 4))
    try:
        _, report = align(
            task,
            AlignmentConfig(text_encoder=text_encoder),
            encoder,
            alignment_training(steps, batch_size, seed, device),
            text_model=text_model,
            run_dir=out,
            resume=resume,
            on_step=on_step,
        )
    finally:
        if cache_path is not None and text_model.num_encoded > 0:
            text_model.save_cache()
    path = None if out is None else report.save_json(Path(out) / "alignment.json")
    return report, path
