"""``bench cost`` flags and entry point (imports only the standard library until a command runs,
so ``bench --help`` stays fast). The knobs shared with ``bench run`` (``--lr``, ``--batch-size``,
``--rank``, ``--target-modules``, ``--param METHOD.KEY=VALUE``) come from :mod:`lrvd_bench.cli_knobs`."""

from __future__ import annotations

import argparse
import sys

from lrvd_bench.cli_knobs import add_knob_flags, parse_params
from lrvd_bench.cost.harness import CostConfig


def add_arguments(parser) -> None:
    d = CostConfig()
    parser.add_argument("--model", default=d.model, help="backbone alias, hub id or local dir (default: minilm)")
    parser.add_argument("--task", default=d.task, help="task whose batch shape is used (default: arc-e)")
    parser.add_argument("--max-length", type=int, default=d.max_length)
    parser.add_argument("--steps", type=int, default=d.steps, help="timed training rounds (default 20)")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="discarded warm-up rounds (default 3)")
    parser.add_argument("--n-samples", type=int, default=d.n_samples, help="S of the sampled predictive (default 10)")
    parser.add_argument("--pred-repeats", type=int, default=d.pred_repeats, help="timed prediction rounds")
    parser.add_argument(
        "--limit-train",
        type=int,
        default=d.limit_train,
        help="training examples for after_training, the epoch unit and --whole-run (default 64)",
    )
    parser.add_argument(
        "--limit-eval",
        type=int,
        default=d.limit_eval,
        help="with --whole-run: evaluation examples for the accuracy (default 200)",
    )
    parser.add_argument("--methods", help="comma-separated subset (default: every registered method)")
    parser.add_argument("--device", default=d.device, help="auto | cpu | cuda[:N]")
    parser.add_argument("--data-dir", help="task data directory (default: bundled/auto)")
    parser.add_argument("--out", help="CSV path (Markdown written beside it as .md); a .md path writes only Markdown")
    parser.add_argument(
        "--whole-run",
        type=int,
        metavar="STEPS",
        help="instead: whole training runs of STEPS steps (default methods: lora,bayeslora)",
    )
    parser.add_argument("--run-repeats", type=int, default=2, help="with --whole-run: alternating repeats")
    parser.add_argument("--r", dest="rank", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old --rank
    parser.add_argument("--head-lr", type=float, default=None, help="task-head learning rate (default: --lr)")
    parser.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio, help="LR warm-up fraction")
    add_knob_flags(
        parser, {"lr": d.lr, "batch_size": d.batch_size, "rank": d.r}, default_note="default: the backbone's"
    )
    parser.add_argument(
        "--layers",
        action="store_true",
        help="instead: single adapted layers against the authors' formulation of each op (uses --steps, "
        "--warmup, --n-samples, --device)",
    )
    parser.add_argument(
        "--layer-shapes",
        default="384x8,1024x64",
        help="with --layers: comma-separated DxR (a D x D layer at rank R; default 384x8,1024x64)",
    )
    parser.add_argument("--layer-tokens", type=int, default=512, help="with --layers: rows of the input (default 512)")
    parser.add_argument("--compile", action="store_true", help="with --layers: torch.compile both sides of each step")
    parser.add_argument("--ray-overhead", metavar="RUN_DIR", help="instead: Ray Tune overhead of a finished sweep")
    parser.add_argument("--sweep-seconds", type=float, help="with --ray-overhead: the sweep's wall time")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="with --ray-overhead: trials run at once (default: the run's max_concurrent_trials)",
    )


def config_from_args(args) -> CostConfig:
    """The :class:`CostConfig` of parsed flags."""
    return CostConfig(
        model=args.model,
        task=args.task,
        batch_size=args.batch_size,
        max_length=args.max_length,
        steps=args.steps,
        warmup=args.warmup,
        n_samples=args.n_samples,
        pred_repeats=args.pred_repeats,
        limit_train=args.limit_train,
        limit_eval=args.limit_eval,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None,
        device=args.device,
        data_dir=args.data_dir,
        r=args.rank,
        lr=args.lr,
        head_lr=args.head_lr,
        warmup_ratio=args.warmup_ratio,
        method_params=parse_params(args.param),
        target_modules=args.target_modules,
    )


def main_ray_overhead(args) -> int:
    from lrvd_bench.cost.ray_overhead import ray_overhead_from_run
    from lrvd_bench.cost.report import to_markdown, write_rows

    result = ray_overhead_from_run(args.ray_overhead, args.sweep_seconds, args.concurrency)
    rows = [{"quantity": k, "value": v} for k, v in result.items()]
    columns = [("quantity", "quantity"), ("value", "value")]
    print(to_markdown(rows, columns), end="")
    if args.out:
        write_rows(rows, args.out, columns=columns)
    return 0


def main_whole_run(cfg: CostConfig, args) -> int:
    from lrvd_bench.cost.report import WHOLE_RUN_COLUMNS, to_markdown, write_rows
    from lrvd_bench.cost.whole_run import measure_whole_run

    rows = measure_whole_run(cfg, args.whole_run, args.run_repeats)
    header = (
        f"<!-- bench cost --whole-run {args.whole_run}: batch {cfg.batch_size} x {cfg.max_length} tokens, "
        f"r={cfg.r}, {cfg.limit_train} training examples, {args.run_repeats} repeats -->\n"
    )
    print(header + to_markdown(rows, WHOLE_RUN_COLUMNS), end="")
    if args.out:
        for path in write_rows(rows, args.out, header=header, columns=WHOLE_RUN_COLUMNS):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"384x8,1024x64"`` → ``[(384, 8), (1024, 64)]``."""
    shapes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        d, _, r = part.lower().partition("x")
        if not (d.isdigit() and r.isdigit() and int(d) > 0 and 0 < int(r) <= int(d)):
            raise SystemExit(f"bench cost: --layer-shapes entry {part!r} is not DxR with 0 < R <= D (e.g. 384x8)")
        shapes.append((int(d), int(r)))
    return shapes


def main_layers(args) -> int:
    import torch

    from lrvd.training import resolve_device
    from lrvd_bench.cost.layer_ops import LAYER_COLUMNS, LayerCostConfig, measure_layers
    from lrvd_bench.cost.report import to_markdown, write_rows

    cfg = LayerCostConfig(
        shapes=parse_shapes(args.layer_shapes),
        tokens=args.layer_tokens,
        n_samples=args.n_samples,
        rounds=args.steps,
        warmup=args.warmup,
        device=str(resolve_device(args.device)),
        compile=args.compile,
    )

    header = (
        f"<!-- bench cost --layers: {cfg.device}, torch {torch.__version__}, {torch.get_num_threads()} torch "
        f"threads, {cfg.tokens} rows, {cfg.rounds} rounds{', compiled' if cfg.compile else ''} -->\n"
    )
    rows = measure_layers(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(header + to_markdown(rows, LAYER_COLUMNS), end="")
    if args.out:
        for path in write_rows(rows, args.out, header=header, columns=LAYER_COLUMNS):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def main(args) -> int:
    """``bench cost``: the per-step table (default), ``--layers``, ``--whole-run`` or ``--ray-overhead``."""
    if args.ray_overhead:
        return main_ray_overhead(args)
    if args.layers:
        return main_layers(args)
    cfg = config_from_args(args)
    if args.whole_run:
        return main_whole_run(cfg, args)
    from lrvd_bench.cost.measure import measure
    from lrvd_bench.cost.report import targets, targets_markdown, to_markdown, write_rows

    rows, info = measure(cfg)
    header = (
        f"<!-- bench cost: {info['device']}, torch {info.get('torch')}, transformers {info.get('transformers')}, "
        f"peft {info.get('peft')}, {info['torch_threads']} torch threads, batch {info.get('batch_shape')} -->\n"
    )
    print(header + to_markdown(rows), end="")
    print("\n" + targets_markdown(targets(rows)), end="")
    if args.out:
        for path in write_rows(rows, args.out, header=header):
            print(f"wrote {path}", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0
