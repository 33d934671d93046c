"""Search lr, momentum and batch size for the S5 network with Ray Tune + Optuna + ASHA.

`python -m tuner.search --num-samples 32` runs the search, writes its results under
--out (default results/), then confirms its top configs against the seed's (tuner.retrain).

main() is five stages, each handing the next a typed value:
1. settings: argv -> an Experiment (settings validated once, paths, name, a --resume's study checked),
   before Ray starts;
2. plan: resources, fidelity and the hard stop -> plan.search_plan.SearchPlan (tuner/plan/);
3. run: Ray Tune -> run.runner.SearchRun (tuner/run/);
4. publish: tables, study, plots, best_config.json (tuner/publish/writer.py);
5. confirm: the leaders against the seed's config (confirm.stage.confirm_search, tuner/confirm/).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mnist_net.cli import (
    Parser,
    add_compile_mode,
    non_negative_float,
    non_negative_int,
    parse_duration,
    positive_int,
    say,
)
from mnist_net.config import PRECISIONS
from mnist_net.data import DATA_DIR
from mnist_net.download import DataUnavailable, ensure_mnist
from mnist_net.files import prepare_out_dir
from tuner import extend
from tuner.confirm import stage
from tuner.plan import search_plan
from tuner.publish import writer
from tuner.run import cluster, study, tracking
from tuner.run.runner import asha_line, run_trials
from tuner.run.storage import can_restore, newest_experiment, resolve_storage, storage_path
from tuner.settings import (
    DEFAULT_CONFIRM_TOP,
    DEFAULT_GPU_SHARE,
    DEFAULT_TIME_BUDGET_S,
    SMOKE,
    SearchSettings,
    fidelity_flags,
    from_args,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def build_parser() -> Parser:
    p = Parser(prog="python -m tuner.search", description=__doc__.splitlines()[0])
    d = SearchSettings()  # each SearchSettings flag's dest is its field's name (tuner.settings.from_args)
    what = p.add_argument_group("what to search")
    what.add_argument("--num-samples", type=positive_int,
                      help=f"trials, the seed's config first (default {d.num_samples})")
    what.add_argument("--seed", type=non_negative_int, help=f"seeds the sampler and every trial (default {d.seed})")
    what.add_argument("--name", help="experiment name (default s5-<UTC time>)")
    what.add_argument("--resume", action="store_true", help="continue the interrupted experiment --name "
                      "(default: the newest one in --storage)")
    what.add_argument("--extend", metavar="NAME", help="run --num-samples more trials (default: as many as NAME "
                      "ran) in a new experiment, TPE warm-started from the finished search NAME in --out")
    what.add_argument("--smoke-test", action="store_true", help=f"tiny preset for tests: {SMOKE}, never "
                      "calibrated (with --time-budget, the budget is only the search's hard stop)")
    add_fidelity_flags(p.add_argument_group("time and fidelity"), d)
    add_confirm_flags(p.add_argument_group("the confirm stage"), d)
    where = p.add_argument_group("where it runs")
    where.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                       help="existing Ray cluster host:port (default $RAY_ADDRESS; none = start a local Ray)")
    where.add_argument("--max-concurrent", type=positive_int, help="cap on trials at once (default: what fits)")
    where.add_argument("--gpus-per-trial", type=non_negative_float, help="GPU share per trial, at most 1 (a trial "
                       f"trains on one GPU); 0 forces CPU (default {DEFAULT_GPU_SHARE} when GPUs exist)")
    where.add_argument("--cpus-per-trial", type=positive_int, help="CPUs per trial (default: planned)")
    where.add_argument("--precision", choices=PRECISIONS, help="autocast of every trial and confirm run (default "
                       "auto: bf16 where native, fp16 on V100/T4, else fp32; fp32 on nodes that differ)")
    where.add_argument("--data-dir", type=Path, default=DATA_DIR,
                       help="MNIST folder; a leading ~ is each node's home (default %(default)s)")
    where.add_argument("--storage", help="Ray's experiment storage: a path or URI all nodes share (default <out>/ray)")
    where.add_argument("--dashboard", action="store_true", help="start Ray's dashboard on 127.0.0.1 (local Ray only)")
    out = p.add_argument_group("output and watching")
    out.add_argument("--out", type=Path, default=Path("results"), help="folder for the search's summary files "
                     "(default %(default)s)")
    out.add_argument("--verbose", action="store_true", help="Ray's trial tables and Optuna's log instead of "
                     "the one progress line")
    out.add_argument("--mlflow", metavar="URI", type=tracking.uri_arg, help="also log to MLflow (extra [mlflow]): "
                     "a parent run for the search, one nested run per trial; e.g. file:///tmp/mlruns or http://host:5000")
    out.add_argument("--keep-checkpoints", action="store_true", help="keep every trial checkpoint (default: "
                     "a finished search keeps only the best trial's last and those a --resume would load)")
    return p


def add_fidelity_flags(g, d: SearchSettings) -> None:
    g.add_argument("--time-budget", dest="time_budget_s", type=parse_duration, metavar="DURATION",
                   help="wall-clock budget for the whole command, search and confirm stage: 90s, 20m, 1.5h or "
                   "seconds. The fidelity flags below that are not given are planned to fit it after a "
                   f"few seconds of calibration (default {DEFAULT_TIME_BUDGET_S // 60}m on a machine "
                   "with no GPU and none of the fidelity flags; with GPUs: none, full fidelity)")
    g.add_argument("--max-epochs", type=positive_int, help=f"epochs per trial (default {d.max_epochs}, or planned "
                   "to --time-budget)")
    g.add_argument("--train-size", type=positive_int, help="training subset per trial (default all 50,000, "
                   "or planned to --time-budget)")
    g.add_argument("--eval-size", type=positive_int, help="val subset scored each epoch (default all 10,000, "
                   "or planned to --time-budget)")
    g.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                   help="checkpoint each trial every N epochs (default auto: after the first epoch, then "
                   "whenever the epochs since the last save took about 20x the save's cost). A resumed or "
                   "retried trial loses the epochs since its last checkpoint")
    add_compile_mode(g)


def add_confirm_flags(g, d: SearchSettings) -> None:
    g.add_argument("--no-confirm", "--no-retrain", action="store_true", dest="no_confirm",
                   help="stop after the search (confirm later with python -m tuner.retrain --search NAME)")
    g.add_argument("--confirm-top", type=positive_int, metavar="K", help="the search's K best distinct "
                   f"configs are confirmed against the seed's (default {DEFAULT_CONFIRM_TOP}, at most --num-samples)")
    g.add_argument("--confirm-seeds", "--retrain-seeds", type=positive_int, dest="confirm_seeds",
                   help=f"seeds per confirmed config (default {d.confirm_seeds}, kept to the last by --time-budget)")
    g.add_argument("--confirm-epochs", "--retrain-epochs", type=positive_int, dest="confirm_epochs",
                   help="epochs per confirm run (default = --max-epochs, or planned to --time-budget)")
    g.add_argument("--confirm-train-size", type=positive_int, help="images of the 50k train split per "
                   "confirm run (default all, or planned to --time-budget)")


@dataclass(frozen=True)
class Experiment:
    """Stage 1: what the command asks for, checked before Ray starts."""

    settings: SearchSettings  # from the flags; a --resume's saved ones; an --extend's parent's
    fixed: dict  # the fidelity flags given: a time budget plans only the others
    name: str
    out: Path
    storage: str
    data_dir: str  # absolute (Ray runs trials in other folders), or ~/...: each node's own home
    resumed: bool = False
    extension: extend.Extension | None = None
    confirm: bool = True
    verbose: bool = False
    mlflow: str | None = None
    keep_checkpoints: bool = False
    storage_flag: str | None = None  # --storage as given, for the resume command

    @property
    def summary_dir(self) -> Path:
        return self.out / self.name

    @property
    def resume_command(self) -> str:
        return f"python -m tuner.search --resume --name {self.name} --out {self.out}" + (
            f" --storage {self.storage_flag}" if self.storage_flag else "")


def experiment(args: argparse.Namespace) -> Experiment:
    """Stage 1: settings (validated once), paths and the experiment's name; ValueError (one line) on
    bad input. A clash, nothing to resume or a bad --extend fails here, before any folder exists."""
    if args.name is not None and not NAME_RE.match(args.name):
        raise ValueError(f"--name {args.name!r}: use letters, digits, '.', '_' or '-' (a folder name)")
    settings = from_args(args)
    ext = extend.requested(args, *planned_paths(args)) if args.extend else None
    out = prepare_out_dir(args.out)
    storage = resolve_storage(args.storage, out)
    name, saved = resolve_experiment(args, storage, out)
    if saved is not None:  # a --resume: its study must be writable before Ray starts
        study.check_resume(out / name, f"{storage}/{name}", name)
        settings, ext = saved, extend.of_resumed(out, name, saved)
    elif ext is not None:
        settings = ext.settings
    return Experiment(settings, fidelity_flags(args), name, out, storage,
                      node_path(args.data_dir), args.resume, ext, not args.no_confirm,
                      args.verbose, args.mlflow, args.keep_checkpoints, args.storage)


def node_path(path: Path) -> str:
    """A folder for every node: a relative one made absolute here, a leading ~ left for each node to expand."""
    return str(path) if str(path).startswith("~") else str(path.resolve())


def planned_paths(args) -> tuple[Path, str]:
    """--out and the Ray storage as they will be, without creating either."""
    out = Path(args.out).expanduser().resolve()
    return out, storage_path(args.storage, out)


def resolve_experiment(args, storage: str, out: Path) -> tuple[str, SearchSettings | None]:
    """A new experiment's name (refusing to overwrite one), or the name and saved settings of the
    one to resume. Needs no Ray: a wrong --name fails in a second, not after Ray has started."""
    if args.resume:
        name = args.name or newest_experiment(storage)
        if not can_restore(storage, name):
            what = f"experiment {name!r}" if name else "experiment"
            raise ValueError(f"nothing to resume: no restorable {what} in {storage}; "
                             "start a new search without --resume")
        return name, SearchSettings.load(out / name / "search_settings.json")
    name = args.name or time.strftime("s5-%Y%m%d-%H%M%S", time.gmtime())
    if can_restore(storage, name) or (out / name).exists():
        raise ValueError(f"experiment {name!r} already exists in {storage}; pass --resume to "
                         "continue it, or a new --name")
    return name, None


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()  # a --time-budget counts from here
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        exp = experiment(args)  # 1. settings
        ensure_mnist(args.data_dir)  # once, in the driver, before any trial starts
        cluster.connect(args.address, args.dashboard)
    except (ValueError, DataUnavailable, ConnectionError) as err:
        parser.fail(str(err))
    try:  # 2. plan, once every node reads the storage, has MNIST and runs this code
        plan = search_plan.plan_search(exp.settings, exp.fixed, exp.storage, exp.data_dir, started,
                                       new=not exp.resumed and exp.extension is None, resumed=exp.resumed)
    except ValueError as err:  # a node check's refusal; budget.BudgetTooSmall, after calibration
        cluster.disconnect()
        parser.fail(str(err))
    except KeyboardInterrupt:  # during the calibration: nothing written yet
        cluster.disconnect()
        say("interrupted before the search started; nothing was written")
        return 130
    return run_stages(exp, plan, started)


def run_stages(exp: Experiment, plan: search_plan.SearchPlan, started: float) -> int:
    """Stages 3-5 on the connected Ray, which they end with; the exit code."""
    try:
        start_summary(exp, plan)
        done = run_trials(exp, plan)  # 3. run (None: interrupted, Ray already disconnected)
        if done is None:
            return 130
        if writer.publish(exp, plan, done) is None:  # 4. publish
            return 1
        return confirm_stage(exp, plan, started)  # 5. confirm, on the search's Ray
    finally:
        cluster.disconnect()


def start_summary(exp: Experiment, plan: search_plan.SearchPlan) -> None:
    """The summary folder with the settings a --resume reuses, and the plan's lines."""
    settings, summary_dir = plan.settings, exp.summary_dir
    summary_dir.mkdir(parents=True, exist_ok=True)
    settings.save(summary_dir / "search_settings.json")
    if exp.extension is not None:
        exp.extension.save(summary_dir)  # the link to the parent, for the results and a --resume
        say(f"extending {exp.extension.parent}: TPE warm-started with {len(exp.extension.warm_start()[0])} "
            "of its trials")
    for line in (search_plan.describe(settings), plan.placement.describe(), asha_line(settings),
                 f"experiment {exp.name}: Ray storage {exp.storage}, summary {summary_dir}"):
        if line is not None:
            say(line)


def confirm_stage(exp: Experiment, plan: search_plan.SearchPlan, started: float) -> int:
    """Stage 5 (unless --no-confirm) on the time the budget left; the exit code."""
    if not exp.confirm:
        return 0
    settings = plan.settings
    left = None if settings.time_budget_s is None else settings.time_budget_s - (time.monotonic() - started)
    try:
        stage.confirm_search(settings, exp.summary_dir, exp.out, exp.data_dir, left)
        return 0
    except ValueError as err:  # e.g. a GPU share on a torch without CUDA, in a confirm run
        say(f"error: the confirm stage failed: {err}")
        return 1
    except KeyboardInterrupt:  # the search is published; the runs saved so far are reused
        say(f"confirm stage interrupted; the search's results are in {exp.summary_dir}. Confirm later with: "
            f"python -m tuner.retrain --search {exp.name} --results {exp.out}")
        return 130


if __name__ == "__main__":
    sys.exit(main())
