"""ST tokens inside the prompt: a causal LM that reads an encoding of the raw window.

UrbanGPT (Li et al., KDD 2024) puts the output of a spatio-temporal encoder into the
instruction itself: a few placeholder tokens of the prompt are replaced by the encoder's
embeddings of the window, projected into the LM's input space, and the LM is instruction
tuned (LoRA) together with the encoder and the projection (also TimeCMA and ST-LLM+, which
hand a time-series encoding to the LM as tokens). :class:`STTokenLM` (registry name
``st_token_lm``) is this on top of :class:`~llm_st.models.text_lm.TextLM`:

- the prompt is the ``st_instruct`` template, whose ``{{ st_tokens }}`` slot the
  instruction dataset (:mod:`llm_st.prompting.dataset` with ``st_tokens = K``) fills with
  ``K`` placeholder ids, recording their positions (``st_positions``);
- an ST encoder (:class:`~llm_st.crossmodal.encoders.PatchEncoder` or a registered model
  with ``embed``) embeds the window's scaled history, one vector per node, and a projection
  (:func:`~llm_st.crossmodal.encoders.make_projection`) maps them to the LM's width;
- the ``K`` ST tokens of a prompt are the projected vectors of the prompt's node followed
  by its ``K - 1`` most strongly connected neighbours (:func:`st_token_nodes`: the graph's
  edges in either direction, strongest first, ties by index, the same order as the
  neighbours the prompt lists), padded with the node itself where it has fewer
  neighbours or there is no graph;
- their embeddings replace the placeholders' word embeddings (:func:`splice_st_tokens`),
  and the LM body runs on these input embeddings.

Two ways to answer (``answer``): ``"text"`` trains the cross-entropy of the answer tokens
and forecasts by constrained decoding from the spliced embeddings, as ``text_lm`` does from
token ids; ``"head"`` trains a linear head on the hidden state of the last prompt token to
predict the ``horizon`` values of the series on the task's scaled scale (masked MAE), and
forecasts with one forward pass.

The encoder reads windows scaled with the task's scaler: :meth:`STTokenLM.fit_data` (the
engine calls it before training) keeps the scaler's statistics as buffers of the model, so
a run's ``model.safetensors`` holds them and
:meth:`~llm_st.pipeline.ForecastPipeline.from_run` forecasts without ``scaler.json``.

This module lives in :mod:`llm_st.crossmodal` because it is built on the cross-modal
encoder and projection, a layer above :mod:`llm_st.models`; the model registry imports it
by name (:data:`llm_st.models.registry.EXTRA_MODULES`), so ``build_model("st_token_lm",
...)`` works from anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from llm_st.backbones.spec import BackboneSpec
from llm_st.crossmodal.encoders import PatchEncoder, build_st_encoder, make_projection
from llm_st.data.container import STData
from llm_st.data.timefeatures import time_features_at
from llm_st.errors import ConfigError, DataError
from llm_st.forecast import Forecast
from llm_st.models.base import DataInfo, STModel
from llm_st.models.registry import build_model, register_model
from llm_st.models.text_lm import TextLM
from llm_st.prompting.context import PromptBatch, node_indices
from llm_st.prompting.dataset import ST_SENTINEL, SFTDataConfig, continuation_ids
from llm_st.prompting.templates import load_template
from llm_st.zeroshot.forecaster import ZeroShotForecaster

ANSWERS = ("text", "head")
ENCODER_INPUTS = ("x", "x_mask", "x_time", "y_time")
"""Window tensors the ST encoder reads (never the targets)."""

_MAX_FIT_ROUNDS = 8  # as the instruction dataset's prompt cutting
_ENCODE_WINDOWS = 64  # windows per encoder call when forecasting


# ---------------------------------------------------------------------- pieces
def st_token_nodes(info: DataInfo, k: int) -> np.ndarray:
    """``[N, k]`` int64: row ``n`` is node ``n`` and its ``k - 1`` strongest neighbours.

    Neighbours are the nodes joined to ``n`` by an edge of ``info.adjacency`` in either
    direction, weighted by the larger of the two weights, strongest first, ties broken by
    index (the order of :meth:`~llm_st.data.container.Adjacency.neighbors`, which the
    prompts' neighbour lists use); self-loops are left out. A node with fewer than
    ``k - 1`` neighbours, or every node when there is no graph, is padded with itself.
    """
    n = info.num_nodes
    out = np.repeat(np.arange(n, dtype=np.int64)[:, None], k, axis=1)
    adj = info.adjacency
    if adj is None or k == 1:
        return out
    a = np.asarray(adj, np.float64)
    if a.shape != (n, n):
        raise DataError(
            f"the adjacency has shape {a.shape}, not [{n}, {n}]", "pass a dense [N, N] graph"
        )
    both = np.maximum(a, a.T)
    for node in range(n):
        weights = both[node].copy()
        weights[node] = 0.0
        linked = np.flatnonzero(weights != 0)
        order = linked[np.lexsort((linked, -weights[linked]))][: k - 1]
        out[node, 1 : 1 + len(order)] = order
    return out


def splice_st_tokens(
    embeds: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor
) -> torch.Tensor:
    """``embeds`` ``[B, S, D]`` with ``vectors`` ``[B, K, D]`` at ``positions`` ``[B, K]``.

    Out of place (``index_put``), so gradients reach both the word embeddings and the
    vectors; the vectors are cast to the embeddings' dtype. Positions ``< 0`` (padding of
    rows with fewer placeholders) are skipped.
    """
    B, K = positions.shape
    rows = torch.arange(B, device=embeds.device)[:, None].expand(B, K)
    keep = positions >= 0
    return embeds.index_put((rows[keep], positions[keep]), vectors[keep].to(embeds.dtype))


def pad_prompts(
    ids: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    pad_id: int,
    side: str = "right",
) -> dict[str, torch.Tensor]:
    """Pad token ids of prompts to one width: ``input_ids``, ``attention_mask``,
    ``position_ids`` (``0..len-1`` on the tokens, 0 on padding), ``st_positions`` (moved
    with the padding), ``lengths``; ``side`` ``"left"`` for ``generate``."""
    lengths = torch.as_tensor([len(row) for row in ids], dtype=torch.long)
    width = int(lengths.max()) if len(ids) else 0
    input_ids = torch.full((len(ids), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    offsets = width - lengths if side == "left" else torch.zeros_like(lengths)
    for b, row in enumerate(ids):
        lo = int(offsets[b])
        input_ids[b, lo : lo + len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        mask[b, lo : lo + len(row)] = 1
    position_ids = ((mask.cumsum(1) - 1) * mask).long()
    st = torch.as_tensor([list(p) for p in positions], dtype=torch.long).reshape(len(ids), -1)
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "position_ids": position_ids,
        "st_positions": st + offsets[:, None],
        "lengths": lengths,
    }


class STTokenForecaster(ZeroShotForecaster):
    """The constrained decoder of :class:`~llm_st.zeroshot.ZeroShotForecaster` for prompts
    with ST tokens: rendered with ``st_tokens`` = :data:`~llm_st.prompting.dataset.ST_SENTINEL`,
    split there and tokenized exactly as the instruction dataset does
    (:meth:`prompt_ids`), cut to the token budget with the placeholders counted, and decoded
    from input embeddings with the ST vectors spliced in.

    Attributes
    ----------
    num_st_tokens
        ``K`` placeholders per prompt.
    st_vectors
        Set for the duration of one forecast by :class:`STTokenLM`: maps prompt indices
        ``[m]`` of the prompt batch to their ST vectors ``[m, K, D]``.
    """

    prompt_variables = {"st_tokens": ST_SENTINEL}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.num_st_tokens = 0
        self.st_vectors: Callable[[np.ndarray], torch.Tensor] | None = None
        self._sentinel_tokens = len(
            self.tokenizer(ST_SENTINEL, add_special_tokens=False)["input_ids"]
        )
        self._encoded: tuple[list[str], list[list[int]], list[list[int]]] | None = None

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    def prompt_ids(self, batch: PromptBatch) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids of the prompts (``K`` placeholder ids, the pad id, where the sentinel
        was) and the positions of the placeholders, as
        :func:`~llm_st.prompting.dataset.build_sft_dataset` writes them: the text before
        the sentinel with the tokenizer's special tokens, the text after it as a
        continuation (:func:`~llm_st.prompting.dataset.continuation_ids`)."""
        if self._encoded is not None and self._encoded[0] == batch.texts:
            return self._encoded[1], self._encoded[2]
        K = self.num_st_tokens
        parts = [text.split(ST_SENTINEL) for text in batch.texts]
        if any(len(p) != 2 for p in parts):
            raise ConfigError(
                f"template {self.builder.template.name!r} must write {{{{ st_tokens }}}} "
                "exactly once",
                "use the st_instruct template or put {{ st_tokens }} once into yours",
            )
        head = self.tokenizer([p[0] for p in parts], add_special_tokens=batch.add_special_tokens)
        tail = continuation_ids(self.tokenizer, [p[1] for p in parts], strict=False)
        ids = [
            list(a) + [self.pad_id] * K + list(b)
            for a, b in zip(head["input_ids"], tail, strict=True)
        ]
        positions = [list(range(len(a), len(a) + K)) for a in head["input_ids"]]
        self._encoded = (list(batch.texts), ids, positions)
        return ids, positions

    def _fit_prompts(self, batch: PromptBatch, budget: int) -> PromptBatch:
        """Cut prompts to ``budget`` tokens counting the ``K`` placeholders, as the dataset
        does: the text (with the sentinel) gets ``budget - K + sentinel tokens``, and the
        budget is tightened where the real ids still exceed it."""
        room = np.full(len(batch.texts), int(budget), np.int64)
        budgets = room - self.num_st_tokens + self._sentinel_tokens
        ids, _ = self.prompt_ids(batch)
        for rounds in range(_MAX_FIT_ROUNDS + 1):
            over = np.asarray([len(p) for p in ids], np.int64) - room
            if not np.any(over > 0):
                break
            if rounds == _MAX_FIT_ROUNDS:
                raise ConfigError(
                    f"could not cut the prompts with {self.num_st_tokens} ST tokens to "
                    f"{int(budget)} tokens",
                    "raise max_length or use a shorter template",
                )
            if rounds:
                budgets[over > 0] -= over[over > 0]
            self.builder.fit_to_budget(batch, budgets)
            ids, _ = self.prompt_ids(batch)
        return batch

    def _prompt_lengths(self, batch: PromptBatch) -> np.ndarray:
        return np.asarray([len(p) for p in self.prompt_ids(batch)[0]], np.int64)

    def embed_prompts(
        self, batch: PromptBatch, chunk: np.ndarray, device: torch.device, side: str
    ) -> dict[str, torch.Tensor]:
        """Padded prompts ``chunk`` of ``batch`` with ``inputs_embeds``: the word embeddings
        with the ST vectors (:attr:`st_vectors`) at the placeholders."""
        if self.st_vectors is None:
            raise ConfigError(
                "the ST vectors of this forecast are not set",
                "forecast through STTokenLM.forecast_windows",
            )
        ids, positions = self.prompt_ids(batch)
        enc = pad_prompts([ids[i] for i in chunk], [positions[i] for i in chunk], self.pad_id, side)
        enc = {k: v.to(device) for k, v in enc.items()}
        words = self.model.get_input_embeddings()(enc["input_ids"])
        enc["inputs_embeds"] = splice_st_tokens(words, enc["st_positions"], self.st_vectors(chunk))
        return enc

    def _generate_inputs(
        self, batch: PromptBatch, chunk: np.ndarray, device: torch.device
    ) -> dict[str, torch.Tensor]:
        enc = self.embed_prompts(batch, chunk, device, side="left")
        return {"inputs_embeds": enc["inputs_embeds"], "attention_mask": enc["attention_mask"]}


def _build_encoder(
    encoder: str | nn.Module, params: Mapping[str, Any] | None, info: DataInfo
) -> tuple[STModel, str]:
    """The ST encoder ``encoder`` (``"patch"``, a registered model name, or a module) built
    with ``params``."""
    params = dict(params or {})
    if isinstance(encoder, str) and params:
        try:
            module = (
                PatchEncoder(info, **params)
                if encoder == "patch"
                else build_model(encoder, info, **params)
            )
        except TypeError as exc:
            raise ConfigError(
                f"encoder_params {params} do not fit encoder {encoder!r} ({exc})",
                "pass the encoder's own arguments (PatchEncoder: d_model, num_layers, "
                "num_heads, patch_len, stride, dropout)",
            ) from exc
        return build_st_encoder(module, info)[0], encoder
    if params:
        raise ConfigError(
            "encoder_params are given with an encoder module", "build the module with them"
        )
    return build_st_encoder(encoder, info)


def _first_difference(saved: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> str:
    """The first tensor name or shape that differs between two state dicts, in words."""
    for key in sorted(set(saved) | set(own)):
        if key not in saved:
            return f"{key} is not in the align run"
        if key not in own:
            return f"{key} of the align run is not in this model"
        if tuple(saved[key].shape) != tuple(own[key].shape):
            return f"{key} is {list(saved[key].shape)} there, {list(own[key].shape)} here"
    return ""


# ---------------------------------------------------------------------- the model
@register_model("st_token_lm")
class STTokenLM(TextLM):
    """A causal LM whose prompt holds ST tokens: encoder embeddings of the raw window.

    Parameters
    ----------
    info, backbone, template, serializer, max_length, num_neighbors, description,
    val_windows, val_nodes, test_windows, test_nodes, num_samples, temperature, top_p,
    decode_batch_size, seed
        As :class:`~llm_st.models.text_lm.TextLM`; the template must read ``st_tokens``
        (default ``st_instruct``). ``max_length`` None: the LM's context length (training
        prompts are cut to the same budget as forecasting prompts).
    encoder
        The ST encoder: ``"patch"`` (:class:`~llm_st.crossmodal.encoders.PatchEncoder`) or
        a registered model with ``embed(batch) -> [B, N, D]`` and ``embed_dim`` (e.g.
        ``stid``); trained with the LM's adapter.
    encoder_params
        Keyword arguments of the encoder (e.g. ``{d_model: 64, num_layers: 2}``).
    projection
        ``"linear"`` or ``"mlp"`` from the encoder's width to the LM's hidden size.
    st_tokens
        ``K`` ST tokens per prompt: the prompt's node, then its ``K - 1`` strongest graph
        neighbours (:func:`st_token_nodes`; the node itself pads where there are fewer).
    answer
        ``"text"``: the forecast is written as answer tokens (cross-entropy, constrained
        decoding); ``"head"``: a linear head on the hidden state of the last prompt token
        gives the ``horizon`` values on the task's scaled scale (masked MAE against
        ``y_scaled``; prompts without answers).
    init_from
        An ``llm-st align`` run directory: its ``model.safetensors`` (the encoder) and the
        ``projection.*`` tensors of its ``objective.safetensors`` initialize this model's
        encoder and projection. The encoder must be the same (name, parameters, data
        shape: history, nodes, channels) and the projection of the same kind with the LM's
        hidden size as output, else :class:`ConfigError`. Read when the model is built; a
        model rebuilt from a finished run (whose weights replace these) does not need the
        directory any more, so a missing one is an error only when training starts
        (:meth:`fit_data`).

    Notes
    -----
    Packed instruction data (``objective.params.packing``) are refused: a packed row holds
    several examples but carries the window tensors and node of its first example only,
    so the other examples' placeholders could not get their own ST tokens.
    """

    forecaster_class = STTokenForecaster
    needs_windows = True
    """The instruction batches carry each row's window tensors (the encoder's input)."""

    def __init__(
        self,
        info: DataInfo,
        backbone: BackboneSpec | Mapping[str, Any] | str | None = None,
        template: str = "st_instruct",
        serializer: Any = None,
        max_length: int | None = None,
        num_neighbors: int = 5,
        description: str | None = None,
        val_windows: int | None = 16,
        val_nodes: int | None = 8,
        test_windows: int | None = None,
        test_nodes: int | None = None,
        num_samples: int = 1,
        temperature: float = 0.0,
        top_p: float = 0.9,
        decode_batch_size: int | str = "auto",
        seed: int = 0,
        encoder: str = "patch",
        encoder_params: Mapping[str, Any] | None = None,
        projection: str = "mlp",
        st_tokens: int = 4,
        answer: str = "text",
        init_from: str | Path | None = None,
    ):
        if isinstance(st_tokens, bool) or not isinstance(st_tokens, int) or st_tokens < 1:
            raise ConfigError(
                f"st_tokens={st_tokens!r} must be a positive integer",
                "use e.g. st_tokens=4 (the node and its 3 strongest neighbours)",
            )
        if answer not in ANSWERS:
            raise ConfigError(f"answer={answer!r} is not one of {ANSWERS}", "use text or head")
        if "st_tokens" not in load_template(template).variables:
            raise ConfigError(
                f"template {template!r} has no {{{{ st_tokens }}}} slot for the ST tokens",
                "use template st_instruct, or put {{ st_tokens }} into your template",
            )
        super().__init__(
            info,
            backbone,
            template,
            serializer,
            max_length,
            num_neighbors,
            description,
            val_windows,
            val_nodes,
            test_windows,
            test_nodes,
            num_samples,
            temperature,
            top_p,
            decode_batch_size,
            seed,
        )
        self.num_st_tokens = st_tokens
        self.answer = answer
        self.forecaster().num_st_tokens = st_tokens
        self.encoder, self.encoder_name = _build_encoder(encoder, encoder_params, info)
        self.hidden_size = int(self.hf_model.get_input_embeddings().weight.shape[-1])
        self.projection_kind = projection
        self.projection = make_projection(projection, self.encoder.embed_dim, self.hidden_size)
        self.head = nn.Linear(self.hidden_size, info.horizon) if answer == "head" else None
        nodes = torch.from_numpy(st_token_nodes(info, st_tokens))
        self.register_buffer("st_nodes", nodes, persistent=False)  # rebuilt from info
        shape = (info.num_nodes, info.num_channels)
        self.register_buffer("scaler_shift", torch.full(shape, float("nan")))
        self.register_buffer("scaler_scale", torch.full(shape, float("nan")))
        self.init_from = None if init_from is None else str(init_from)
        self._init_pending = False
        if self.init_from is not None:
            if Path(self.init_from).expanduser().is_dir():
                self.load_alignment(self.init_from)
            else:
                self._init_pending = True  # rebuilt from a run: its weights replace these

    # ------------------------------------------------------------------ set-up
    def load_alignment(self, directory: str | Path) -> None:
        """Initialize the encoder and projection from an ``llm-st align`` run directory.

        Raises
        ------
        ConfigError
            Missing files, a projection whose output is not the LM's hidden size, a
            projection of another kind, or an encoder with other tensors or shapes.
        """
        path = Path(directory).expanduser()
        files = [path / "model.safetensors", path / "objective.safetensors"]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ConfigError(
                f"init_from={str(directory)!r} has no {' or '.join(missing)}, so it is not a "
                "finished llm-st align run",
                "pass the --out directory of llm-st align",
            )
        encoder_state = load_file(str(files[0]))
        projection = {
            k.removeprefix("projection."): v
            for k, v in load_file(str(files[1])).items()
            if k.startswith("projection.")
        }
        last = projection.get("2.weight", projection.get("weight"))
        if last is None:
            raise ConfigError(
                f"{files[1]} holds no projection.* tensors", "pass an llm-st align run directory"
            )
        if last.shape[0] != self.hidden_size:
            raise ConfigError(
                f"the align run in {str(directory)!r} projects into a {last.shape[0]}-dim text "
                f"space, but the LM's hidden size is {self.hidden_size}",
                f"align with a text encoder of width {self.hidden_size} (or drop init_from)",
            )
        own = self.projection.state_dict()
        if set(projection) != set(own):
            raise ConfigError(
                f"the align run's projection ({sorted(projection)}) is not a "
                f"{self.projection_kind!r} projection",
                "set projection to the kind the align run used (linear or mlp)",
            )
        problem = _first_difference(projection, own) or _first_difference(
            encoder_state, self.encoder.state_dict()
        )
        if problem:
            raise ConfigError(
                f"the align run in {str(directory)!r} does not fit this model's encoder "
                f"{self.encoder_name!r} and projection: {problem}",
                "use the same encoder, encoder_params and data shape (history, nodes, "
                "channels) as the align run",
            )
        self.encoder.load_state_dict(encoder_state)
        self.projection.load_state_dict(projection)
        self._init_pending = False

    def fit_data(self, train: STData, scaler: Any) -> None:
        """Keep the task's scaler (``shift``, ``scale``, broadcast to ``[N, C]``) as buffers:
        the encoder reads windows scaled with it and the head answers on its scale. Also
        loads ``init_from`` if the model was built before the directory was there."""
        if getattr(scaler, "shift", None) is None:
            raise ConfigError(
                "st_token_lm needs the task's fitted scaler", "fit the scaler on the train split"
            )
        shape = tuple(self.scaler_shift.shape)
        for buffer, stat in ((self.scaler_shift, scaler.shift), (self.scaler_scale, scaler.scale)):
            value = np.broadcast_to(np.asarray(stat, np.float32), shape)
            buffer.copy_(torch.from_numpy(np.ascontiguousarray(value)))
        if self._init_pending:
            self.load_alignment(self.init_from)

    def sft_config(self, part: str, **overrides: Any) -> SFTDataConfig:
        """TextLM's settings plus ``st_tokens = K`` (and prompts without answers for the
        head); ``max_length`` is the decoder's token budget when not set."""
        if overrides.get("packing"):
            raise ConfigError(
                "st_token_lm cannot train on packed instruction data: a packed row carries "
                "the window and node of its first example only",
                "set objective.params.packing: false",
            )
        settings: dict[str, Any] = {
            "st_tokens": self.num_st_tokens,
            "max_length": self.max_length or self.forecaster().max_context,
        }
        if self.answer == "head":
            settings["with_answer"] = False
        return super().sft_config(part, **{**settings, **overrides})

    # ------------------------------------------------------------------ training
    def st_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, K, D_lm]`` projected encoder embeddings of each row's node and neighbours.

        Each distinct window of the batch is encoded once (rows of one window share it).
        """
        windows = batch["window"]
        unique, inverse = torch.unique(windows, return_inverse=True)
        rows = torch.arange(len(windows), device=windows.device)
        first = torch.full((len(unique),), len(windows), dtype=torch.long, device=windows.device)
        first = first.scatter_reduce(0, inverse, rows, reduce="amin")
        inputs = {k: batch[k][first] for k in ENCODER_INPUTS if k in batch}
        z = self.projection(self.encoder.embed(inputs))  # [U, N, D_lm]
        return z[inverse[:, None], self.st_nodes[batch["node"]]]

    def st_embeds(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, S, D_lm]`` input embeddings of an instruction batch: the word embeddings of
        ``input_ids`` with the ST vectors (:meth:`st_vectors`) exactly at ``st_positions``.

        (A packed batch, whose 4-D mask keeps examples apart and whose ``st_positions`` the
        dataset shifted to each example's place in the sequence, would be spliced the same
        way, but it carries only its first example's window and node, so
        :meth:`sft_config` refuses packing.)
        """
        positions = batch["st_positions"]
        if "example_lengths" in batch or positions.shape[1] != self.num_st_tokens:
            raise ConfigError(
                f"the batch has {positions.shape[1]} ST positions per row, the model "
                f"{self.num_st_tokens} (packed or built with another st_tokens)",
                "build the instruction data with model.sft_config (unpacked)",
            )
        words = self.hf_model.get_input_embeddings()(batch["input_ids"])
        return splice_st_tokens(words, positions, self.st_vectors(batch))

    def head_targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, H]`` scaled targets of each row's series and whether they were observed."""
        b = torch.arange(len(batch["node"]), device=batch["node"].device)
        index = (b, slice(None), batch["node"], batch["channel"])
        return batch["y_scaled"][index], batch["y_mask"][index].bool()

    def lm_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(loss, logs)``: the answer tokens' cross-entropy (``text``) or the masked MAE of
        the head's forecast from the last prompt token (``head``), with ST tokens spliced
        into the prompt."""
        hidden = self.hidden_states(batch, self.st_embeds(batch))
        if self.answer == "text":
            return self.token_loss(hidden, batch["labels"])
        last = hidden[torch.arange(len(hidden), device=hidden.device), batch["prompt_length"] - 1]
        pred = self.head(last.float())  # [B, H]
        target, observed = self.head_targets(batch)
        error = torch.where(observed, (pred - target.float()).abs(), torch.zeros_like(pred))
        return error.sum() / observed.sum().clamp(min=1), {}  # 0 without observed targets

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The number of terms :meth:`lm_loss` averages over: answer tokens (``text``) or
        observed target values (``head``). The ``sft`` objective weights micro-batches,
        the batches of a step and validation batches by it.
        """
        if self.answer == "text":
            return batch["num_label_tokens"].sum().float()
        return self.head_targets(batch)[1].sum().float()

    # ------------------------------------------------------------------ forecasting
    def _check_data(self, data: STData, horizon: int) -> None:
        info = self.info
        if horizon != info.horizon:
            raise ConfigError(
                f"the model was trained to forecast {info.horizon} values, not {horizon}",
                f"forecast horizon {info.horizon}, or train for {horizon}",
            )
        if data.num_nodes != info.num_nodes or data.num_channels != info.num_channels:
            raise DataError(
                f"the ST encoder was built for {info.num_nodes} nodes x {info.num_channels} "
                f"channels, the data have {data.num_nodes} x {data.num_channels}",
                "forecast data of the training shape",
            )
        if bool(torch.isnan(self.scaler_shift).any()):
            raise ConfigError(
                "the model has no scaler statistics (fit_data was not called)",
                "train it with the engine, load a run (ForecastPipeline.from_run), or call "
                "fit_data(train, scaler)",
            )

    def window_inputs(
        self, data: STData, starts: np.ndarray, history: int, horizon: int
    ) -> dict[str, torch.Tensor]:
        """The encoder's inputs for windows starting at rows ``starts``, as
        :class:`~llm_st.data.windows.WindowDataset` gives them in training (history scaled
        with the kept scaler, missing entries 0), on the model's device."""
        device = self.scaler_shift.device
        starts = np.asarray(starts, np.int64)
        rows = starts[:, None] + np.arange(history)
        values = torch.from_numpy(np.ascontiguousarray(data.values[rows], np.float32)).to(device)
        mask = torch.from_numpy(np.ascontiguousarray(data.mask[rows])).to(device)
        x = (values - self.scaler_shift) / self.scaler_scale * mask
        times = time_features_at(data, starts[:, None] + np.arange(history + horizon))
        times = torch.from_numpy(np.ascontiguousarray(times)).to(device)
        return {"x": x, "x_mask": mask, "x_time": times[:, :history], "y_time": times[:, history:]}

    def prompt_vectors(
        self,
        data: STData,
        starts: np.ndarray,
        history: int,
        horizon: int,
        node_idx: np.ndarray,
    ) -> Callable[[np.ndarray], torch.Tensor]:
        """``vectors(rows) -> [m, K, D_lm]``: the ST vectors of prompts ``rows`` of the prompt
        batch of these windows and nodes (window-major, node, channel order).

        A call encodes only the windows its rows belong to (all nodes of each window, as in
        training) and keeps them until the next call, so consecutive chunks of prompts share
        a window's encoding and memory stays a chunk's windows, whatever the number of
        windows.
        """
        per_window = len(node_idx) * data.num_channels
        device = self.scaler_shift.device
        chosen = torch.as_tensor(np.asarray(node_idx, np.int64), device=device)
        kept: dict[int, torch.Tensor] = {}

        def vectors(rows: np.ndarray) -> torch.Tensor:
            rows = np.asarray(rows, np.int64)
            windows = rows // per_window
            needed = np.unique(windows)
            new = np.asarray([w for w in needed.tolist() if w not in kept], np.int64)
            for lo in range(0, len(new), _ENCODE_WINDOWS):
                block = new[lo : lo + _ENCODE_WINDOWS]
                inputs = self.window_inputs(data, starts[block], history, horizon)
                z = self.projection(self.encoder.embed(inputs))  # [w, N, D_lm]
                kept.update(zip(block.tolist(), z, strict=True))
            for w in [w for w in kept if w not in set(needed.tolist())]:
                del kept[w]
            z = torch.stack([kept[w] for w in windows.tolist()])  # [m, N, D_lm]
            m = torch.as_tensor(rows, device=device)
            node = chosen[(m % per_window) // data.num_channels]
            return z[torch.arange(len(rows), device=device)[:, None], self.st_nodes[node]]

        return vectors

    @torch.no_grad()
    def forecast_windows(
        self,
        data: STData,
        starts: np.ndarray,
        history: int,
        horizon: int,
        nodes: Sequence[int | str] | None = None,
        progress: bool = False,
    ) -> Forecast:
        """Forecast the windows whose history starts at rows ``starts`` (original scale).

        The prompts are rendered and tokenized as in training (prompt only), the windows
        encoded (every node, as in training; :meth:`prompt_vectors`) and each prompt's ``K``
        ST vectors spliced in; then
        ``text``: constrained greedy (or sampled) decoding from the input embeddings,
        answers parsed as by ``text_lm`` (``valid`` False where none parsed); ``head``: one
        forward pass, the head's values transformed back with the kept scaler.
        """
        self._check_data(data, horizon)
        began = time.perf_counter()
        starts = np.atleast_1d(np.asarray(starts, np.int64))
        node_idx = node_indices(data, nodes)
        was_training = self.training
        self.eval()
        fc = self.forecaster()
        try:
            fc.st_vectors = self.prompt_vectors(data, starts, history, horizon, node_idx)
            if self.answer == "text":
                forecast = fc.forecast_windows(data, starts, history, horizon, nodes, progress)
            else:
                forecast = self._forecast_head(data, starts, history, horizon, node_idx, began)
        finally:
            fc.st_vectors = None
            self.train(was_training)
        forecast.meta["model"] = (
            f"st_token_lm {self.spec.source} ({self.spec.freeze}, {self.answer} answers, "
            f"{self.num_st_tokens} ST tokens)"
        )
        return forecast

    def _forecast_head(
        self,
        data: STData,
        starts: np.ndarray,
        history: int,
        horizon: int,
        node_idx: np.ndarray,
        began: float,
    ) -> Forecast:
        fc = self.forecaster()
        batch = fc.builder.build(
            data, starts, history, horizon, node_idx, variables=fc.prompt_variables
        )
        if fc.max_context is not None:
            batch = fc._fit_prompts(batch, fc.max_context)
        lengths = fc._prompt_lengths(batch)
        device = self.scaler_shift.device
        size = fc._resolve_batch_size(device, int(lengths.max()), 0)
        M, C = len(batch.texts), data.num_channels
        scaled = torch.empty(M, horizon, device=device)
        for lo in range(0, M, size):
            chunk = np.arange(lo, min(lo + size, M))
            enc = fc.embed_prompts(batch, chunk, device, side="right")
            hidden = self.hidden_states(enc, enc["inputs_embeds"])
            last = hidden[torch.arange(len(chunk), device=device), enc["lengths"] - 1]
            scaled[lo : lo + len(chunk)] = self.head(last.float())
        m = torch.arange(M, device=device)
        node = torch.as_tensor(node_idx, device=device)[(m // C) % len(node_idx)]
        channel = m % C
        values = scaled * self.scaler_scale[node, channel][:, None]
        values = values + self.scaler_shift[node, channel][:, None]
        values = values.float().cpu().numpy()[None]  # [1, M, H]
        forecast = fc._assemble(
            data,
            batch,
            lengths,
            values,
            np.ones(values.shape, bool),
            starts,
            history,
            horizon,
            node_idx,
            began,
        )
        for key in ("num_samples", "temperature", "top_p"):
            forecast.meta.pop(key, None)
        return forecast

    def describe(self) -> dict[str, Any]:
        """Prompt, decoding and ST-token settings, for reports."""
        return {
            **super().describe(),
            "st_tokens": self.num_st_tokens,
            "encoder": self.encoder_name,
            "projection": self.projection_kind,
            "answer": self.answer,
            "init_from": self.init_from,
        }
