"""``bench``: run a comparison sweep, rebuild its leaderboard, list methods and tasks.

Thin on purpose: parse flags, build an :class:`~lrvd_bench.config.ExperimentConfig`, hand over to
:mod:`lrvd_bench.sweep`. Imports are lazy so ``bench --help`` and ``bench list-methods`` start in
well under a second (no torch, peft or Ray). Every user error (:class:`lrvd.LRVDError`, of which
:class:`~lrvd_bench.errors.BenchError` is one) prints one line on stderr and exits with code 2.

Exit codes: 0 all trials ok; 1 some trials failed or did not run; 2 user error (also: another bench
run holds the run directory); 130 interrupted (Ctrl+C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence

EXAMPLES = """examples:
  bench run                                   # configs/quickstart.yaml: every method on ARC-Easy, 3 seeds, CPU
  bench run --methods lora,bayeslora --task arc-c --seeds 0,1 --max-steps 300
  bench run --config configs/paper_llama2_commonsense.yaml --gpus-per-trial 1 --address auto
  bench run --lr 5e-4 --rank 16 --param bayeslora.kl_scale=1e-5 bayeslora.tau=2.5
  bench list-methods --params bayeslora                  # every hyper-parameter: type, default, help
  bench export runs/quickstart-20260101-120000 --method bayeslora --seed 0 --out bayeslora-arc-e
  bench run --resume runs/quickstart-20260101-120000   # re-runs only unfinished trials
  bench leaderboard runs/quickstart-20260101-120000 --markdown
  bench analyze runs/quickstart-20260101-120000          # CSV + PNG under RUN_DIR/analysis
"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` where a flag has a real default; flags that default to None ("keep the
    config file's value") stay quiet instead of claiming the default is None."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, [], False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


class VersionAction(argparse.Action):
    """``--version``: the package version and git commit, looked up only when asked (git is a subprocess)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from lrvd_bench.provenance import version_line

        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    from lrvd_bench.cli_knobs import add_knob_flags
    from lrvd_bench.run_flags import add_flags, nested_keys_help, quickstart_help

    parser = argparse.ArgumentParser(
        prog="bench",
        description="Compare Bayesian low-rank adapter methods: methods × tasks × seeds as Ray Tune "
        "trials, with accuracy, calibration, rank and cost.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action=VersionAction, help="print the version and git commit, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a sweep (default config: configs/quickstart.yaml)",
        formatter_class=HelpFormatter,
        epilog=nested_keys_help(),
        description="Run a sweep. A flag left out keeps the config file's value; keys the config "
        "file leaves out take the built-in defaults listed below. --set key=value reaches any "
        "config key (dotted: train.lr, adapter.r, method_params.<method>.<name>).\n\n" + quickstart_help(),
    )
    run.add_argument("--config", help="YAML config (default: configs/quickstart.yaml, shown above)")
    add_flags(run)
    add_knob_flags(run, default_note="default: the config's")
    run.add_argument(
        "--set",
        dest="set_items",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. train.lr=5e-4 adapter.target_modules=[query,value]",
    )
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted sweep (only unfinished trials run)")
    run.add_argument("--retry-failed", action="store_true", help="with --resume: also re-run failed trials")
    run.add_argument(
        "--dry-run", action="store_true", help="check everything a run checks, print the expanded trials and exit"
    )
    run.add_argument("--print-config", action="store_true", help="print the effective config (file + flags) as YAML")

    board = sub.add_parser("leaderboard", help="rebuild a run's leaderboard (CSV + Markdown) from its trials")
    board.add_argument("run_dir", help="run directory, e.g. runs/quickstart-...")
    board.add_argument("--out", help="leaderboard CSV path (default: RUN_DIR/leaderboard.csv; .md beside it)")
    board.add_argument("--markdown", action="store_true", help="print the Markdown table")
    board.add_argument("--figures", action="store_true", help="also redraw RUN_DIR/figures")
    board.add_argument(
        "--reference",
        help="method the paired differences compare with (default: the run's config key reference, else lora)",
    )

    analyze = sub.add_parser(
        "analyze",
        help="post-hoc analyses of a run (rank dynamics, tau sweep, gauge, "
        "calibration, SNR): CSV + PNG under RUN_DIR/analysis",
    )
    analyze.add_argument("run_dir", help="run directory, e.g. runs/quickstart-...")
    analyze.add_argument("--out", help="output folder (default: RUN_DIR/analysis)")
    analyze.add_argument("--only", help="comma-separated subset: rank_dynamics,tau_sweep,gauge,calibration,snr")
    analyze.add_argument("--taus", help="comma-separated tau grid of the tau sweep (inf allowed)")

    from lrvd_bench.cost.cli import add_arguments as add_cost_arguments  # stdlib-only import: --help stays fast

    add_cost_arguments(
        sub.add_parser(
            "cost",
            help="step time, peak memory, prediction cost of every registered method (interleaved)",
            description="Measure every registered method on one backbone and batch shape in one process, "
            "round-robin; or, with --ray-overhead RUN_DIR, a finished sweep's Ray Tune overhead.",
        )
    )

    export = sub.add_parser(
        "export",
        help="one trial's adapter as a self-contained folder (peft adapter, task head, sidecar, README model card)",
        formatter_class=HelpFormatter,
    )
    export.add_argument("run_dir", help="run directory, e.g. runs/quickstart-...")
    export.add_argument("--method", required=True, help="method of the trial to export")
    export.add_argument("--seed", type=int, help="seed of the trial (default: the lowest finished seed)")
    export.add_argument("--out", required=True, help="output folder (new or empty)")

    methods = sub.add_parser("list-methods", help="registered adapter methods (--params: their hyper-parameters)")
    methods.add_argument(
        "--params",
        nargs="?",
        const="",
        default=None,
        metavar="METHOD",
        help="print every hyper-parameter (type, default, help) of METHOD, or of all methods",
    )
    sub.add_parser("list-tasks", help="registered tasks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from lrvd.errors import LRVDError, first_line

    parser = build_parser()
    args = parser.parse_args(argv)
    # run.json records the command as typed (``bench`` + its arguments), also when called in-process
    args.command_line = ["bench", *(sys.argv[1:] if argv is None else argv)]
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except LRVDError as err:
        print(f"bench: error: {first_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # outside Ray Tune's loop; SIGTERM arrives as its subclass Terminated
        code = getattr(stop, "exit_code", 130)
        print("bench: terminated (SIGTERM)" if code == 143 else "bench: interrupted", file=sys.stderr)
        return code
    except BrokenPipeError:  # `bench leaderboard RUN | head`
        sys.stderr.close()
        return 0
    except OSError as err:  # the disk filled up (or a quota ran out) while the driver wrote
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(
            f"bench: error: no space left on the device writing {err.filename or 'the run folder'}; "
            "free space, then continue with bench run --resume RUN",
            file=sys.stderr,
        )
        return 2


# -- commands ------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from lrvd_bench.cli_knobs import knob_overrides
    from lrvd_bench.config import default_config_path, load_config, parse_set
    from lrvd_bench.errors import BenchError
    from lrvd_bench.run_flags import flag_overrides

    overrides = {**parse_set(args.set_items), **flag_overrides(args), **knob_overrides(args)}
    if args.resume:
        extra = set(overrides) - {"address"}
        if extra or args.config:
            raise BenchError(
                "--resume continues a run with its saved config.yaml; drop "
                + ", ".join(sorted(extra | ({"--config"} if args.config else set())))
            )
        from lrvd_bench.sweep import resume_sweep

        return _report(
            resume_sweep(
                args.resume, retry_failed=args.retry_failed, address=overrides.get("address"), command=args.command_line
            )
        )
    if args.retry_failed:
        raise BenchError("--retry-failed only makes sense with --resume RUN_DIR")
    path = args.config or default_config_path()
    config = load_config(path, overrides)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    if args.dry_run:
        from lrvd_bench.stage_plan import plan_final
        from lrvd_bench.sweep.checks import preflight, run_dir_of

        preflight(config, run_dir_of(config, path))
        specs = config.expand()
        # the stages the run would plan (with a selection block, the final specs come from its choice)
        plan = None if config.selection else plan_final(config, specs)
        for spec in specs:
            point = f" {spec.search_point}" if spec.search_point else ""
            role = f"  [{plan.role(spec)}]" if plan is not None else ""
            print(f"{spec.trial_id}  {spec.method} {spec.task} seed {spec.seed} model {spec.model}{point}{role}")
        if config.random_space():
            print(f"(× {config.num_samples} samples of {sorted(config.random_space())})")
        return 0
    from lrvd_bench.sweep import run_sweep

    return _report(run_sweep(config, config_path=path, command=args.command_line))


def _report(outcome) -> int:
    """The leaderboard as ``bench leaderboard`` prints it, after the sweep's summary line."""
    if outcome.board is not None and len(outcome.board):
        print(board_text(outcome.board))
        print(f"\nall columns: {outcome.run_dir / 'leaderboard.csv'}")
    return outcome.exit_code


def board_text(board) -> str:
    """The leaderboard's main columns as a plain-text table."""
    keys = [
        c
        for c in (
            "task",
            *(["eval_task"] if "shift" in board.columns and (board["shift"] == "ood").any() else []),
            "method",
            "search_point",
            "n_seeds",
            "n_failed",
            "n_learned",
            "accuracy_mean",
            "accuracy_std",
            "ece_mean",
            "nll_mean",
            "brier_mean",
            "effective_rank_mean",
            "train_time_s_mean",
        )
        if c in board.columns
    ]
    return board[keys].to_string(index=False, float_format=lambda v: f"{v:.4g}")


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lrvd_bench.errors import BenchError
    from lrvd_bench.leaderboard import gather_rows, to_markdown, write_leaderboard

    run_dir = Path(args.run_dir)
    if not (run_dir / "trials").is_dir():
        raise BenchError(f"{run_dir} is not a bench run directory (no trials/ folder)")
    from lrvd_bench.sweep.finalize import board_rows

    rows = board_rows(run_dir, gather_rows(run_dir))  # the final stage (selection trials have no eval metrics)
    if args.reference:
        from lrvd_bench.errors import unknown_choice
        from lrvd_bench.method_checks import registered_methods

        if args.reference not in registered_methods():
            raise unknown_choice("reference method", args.reference, registered_methods())
    board = write_leaderboard(rows, run_dir, csv_path=args.out, reference=args.reference)
    from lrvd_bench.sweep.finalize import append_selection

    append_selection(run_dir, Path(args.out).with_suffix(".md") if args.out else None)
    if args.figures:
        from lrvd_bench.plots import make_figures

        make_figures(run_dir, rows, board=board)
    if args.markdown:
        print(to_markdown(board), end="")
    else:
        print(board_text(board))
        print(f"\nall columns: {args.out or run_dir / 'leaderboard.csv'}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lrvd_bench.errors import BenchError

    if not (Path(args.run_dir) / "trials").is_dir():
        raise BenchError(f"{args.run_dir} is not a bench run directory (no trials/ folder)")
    try:
        taus = [float(x) for x in args.taus.split(",")] if args.taus else None
    except ValueError:
        raise BenchError(f"--taus takes comma-separated numbers, got {args.taus!r}") from None
    from lrvd_bench.analyze import analyze_run

    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    analyze_run(args.run_dir, args.out, only=only, taus=taus)
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from lrvd_bench.cost.cli import main as cost_main

    return cost_main(args)


def cmd_export(args: argparse.Namespace) -> int:
    from lrvd_bench.export import export_trial, find_trial

    trial = find_trial(args.run_dir, args.method, args.seed)
    out = export_trial(trial, args.out)
    print(f"exported {trial.name} to {out}")
    return 0


def cmd_list_methods(args: argparse.Namespace) -> int:
    from lrvd.registry import METHODS

    if args.params is not None:
        from lrvd_bench.method_params import print_method_params

        return print_method_params(args.params or None)
    names = METHODS.names()
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name:<{width}}  {_describe_without_import(METHODS, name)}")
    return 0


def cmd_list_tasks(args: argparse.Namespace) -> int:
    from lrvd_bench.tasks import get_task, list_tasks

    names = list(list_tasks())
    width = max((len(n) for n in names), default=0)
    for name in names:
        task = get_task(name)
        mark = " [evaluation only]" if task.eval_only else ""
        print(f"{name:<{width}}  {task.description}{mark}")
    return 0


def _describe_without_import(registry, name: str) -> str:
    """A registered object's one-line description read from its source (no import of peft & co)."""
    import ast
    import importlib.util

    value = registry.entry_point_value(name)
    if not value:
        return registry.describe(name)
    module, _, attr = value.partition(":")
    try:
        spec = importlib.util.find_spec(module)
        tree = ast.parse(open(spec.origin).read()) if spec and spec.origin else None
    except (ImportError, OSError, SyntaxError, ValueError):
        tree = None
    for node in tree.body if tree else []:
        if isinstance(node, ast.ClassDef) and node.name == attr:
            for item in node.body:
                targets = (
                    item.targets
                    if isinstance(item, ast.Assign)
                    else ([item.target] if isinstance(item, ast.AnnAssign) else [])
                )
                if (
                    any(isinstance(t, ast.Name) and t.id == "description" for t in targets)
                    and isinstance(item.value, ast.Constant)
                    and isinstance(item.value.value, str)
                ):
                    return item.value.value
            doc = ast.get_docstring(node)
            return doc.strip().splitlines()[0] if doc else ""
    return ""


COMMANDS = {
    "run": cmd_run,
    "leaderboard": cmd_leaderboard,
    "analyze": cmd_analyze,
    "cost": cmd_cost,
    "export": cmd_export,
    "list-methods": cmd_list_methods,
    "list-tasks": cmd_list_tasks,
}

if __name__ == "__main__":
    sys.exit(main())
