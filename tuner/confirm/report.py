"""The confirm stage: the search's top K configs and the seed's config, trained with the same seeds at one recipe as
Ray tasks; the winner is chosen on val, then compared with the seed's config on test. Recipe "train" (the default)
trains on the 50k train split (or recipe.train_size of it, drawn per seed), selects the winner on the whole 10k val
split (last epoch's val_acc, mean over seeds) and tests every run once on the 10k test split: the paired verdict reads
only that. "train+val", the seed's own 60k recipe, has nothing to select on: it takes one config besides the seed's
(`tuner.retrain --config`); its per-epoch curves are on test, as the seed logged them, and choose nothing."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mnist_net.cli import format_duration
from mnist_net.data import N_VAL
from tuner.confirm import stats
from tuner.confirm.recipe import FULL_RECIPE, SEED_RECIPE_GAP_PP, SEED_RECIPE_TEST_ACC, Recipe, starved
from tuner.space import METRIC, PARAMS, SEED_CONFIG

SEED_LABEL = "seed_config"
OK_STATUS = ("finished", "stopped")


@dataclass(frozen=True)
class Candidate:
    label: str  # "seed_config", or "trial 21"
    config: dict  # the searched hyperparameters only
    proxy_val_acc: float | None = None  # the search's score: its best val_acc at the search's fidelity
    trial_id: str | None = None

    @property
    def is_seed(self) -> bool:
        return self.label == SEED_LABEL


def _same(a: dict, b: dict) -> bool:
    return all(math.isclose(float(a[p]), float(b[p]), rel_tol=1e-9) for p in PARAMS)


def candidates(trials: pd.DataFrame, top: int) -> list[Candidate]:
    """The `top` best distinct configs by proxy score (ties: the earlier trial), then the seed's (its score if run)."""
    ok = trials[trials["status"].isin(OK_STATUS) & trials["best_val_acc"].notna()]
    ok = ok.sort_values(["best_val_acc", "trial"], ascending=[False, True], kind="stable")
    chosen: list[Candidate] = []
    seed_score = None
    for row in ok.itertuples():
        config = {p: getattr(row, p) for p in PARAMS}  # itertuples gives Python numbers, not numpy's
        if _same(config, SEED_CONFIG):
            seed_score = seed_score if seed_score is not None else float(row.best_val_acc)
        elif len(chosen) < top and not any(_same(config, c.config) for c in chosen):
            chosen.append(Candidate(f"trial {row.trial}", config, float(row.best_val_acc), str(row.trial_id)))
    if not chosen:
        raise ValueError("the search has no finished trial besides the seed's config to confirm")
    return chosen + [Candidate(SEED_LABEL, dict(SEED_CONFIG), seed_score)]


def summarize_runs(runs: list[dict]) -> dict:
    """One candidate's runs (one per seed, in seed order) as the report's lists and means."""
    vals = [r["val_acc"] for r in runs if r.get("val_acc") is not None]
    tests = [r["test_acc"] for r in runs]
    return {"seeds": [r["seed"] for r in runs], "val_acc": [r.get("val_acc") for r in runs],
            "val_acc_mean": statistics.fmean(vals) if vals else None, "test_acc": tests,
            "test_acc_mean": statistics.fmean(tests),
            "test_acc_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
            "diverged": [r["diverged"] for r in runs], "seconds": [round(r["seconds"], 1) for r in runs],
            **{key: [r[key] for r in runs] for key in ("epochs_history", "device", "host")}}


def select(cands: list[Candidate], summaries: dict[str, dict]) -> tuple[Candidate, Candidate, str]:
    """(winner, challenger, why): best mean val_acc over seeds (diverged: chance); best searched, for the verdict."""
    searched = [c for c in cands if not c.is_seed]
    if len(searched) == 1 and summaries[searched[0].label]["val_acc_mean"] is None:  # the 60k recipe: no val
        return searched[0], searched[0], "one config besides the seed's: nothing to select"
    score = {c.label: summaries[c.label]["val_acc_mean"] for c in cands}
    winner = max(cands, key=lambda c: score[c.label])  # max keeps the first of equals: the proxy's order
    challenger = max(searched, key=lambda c: score[c.label])
    seeds = len(summaries[winner.label]["val_acc"])
    why = (f"highest mean {METRIC} over {seeds} seed(s) on the whole val split: {score[winner.label]:.2f}% ("
           + ", ".join(f"{c.label} {score[c.label]:.2f}" for c in cands if c is not winner) + ")")
    return winner, challenger, why


def ranking(cands: list[Candidate], summaries: dict[str, dict], winner: Candidate) -> tuple[dict, list[str]]:
    """Kendall's tau between the proxy's and the confirmation's scores of the configs, and warnings."""
    scored = [c for c in cands if c.proxy_val_acc is not None and summaries[c.label]["val_acc_mean"] is not None]
    proxy = [c.proxy_val_acc for c in scored]
    confirmed = [summaries[c.label]["val_acc_mean"] for c in scored]
    rank = {**stats.kendall_tau(proxy, confirmed), "labels": [c.label for c in scored],
            "proxy_val_acc": proxy, "confirmed_val_acc": confirmed}
    warnings = []
    if rank["tau"] < 0:  # False for nan
        warnings.append(f"the proxy ranked these configs against the confirmation (Kendall tau {rank['tau']:.2f}): "
                        "its pick is not to be trusted; raise the search's fidelity")
    best_proxy = max((c for c in scored if not c.is_seed), key=lambda c: c.proxy_val_acc, default=None)
    if (winner.is_seed and winner.proxy_val_acc is not None and best_proxy is not None
            and winner.proxy_val_acc < best_proxy.proxy_val_acc):
        warnings.append(f"the search scored the seed's config below {best_proxy.label} ({winner.proxy_val_acc:.2f} vs "
                        f"{best_proxy.proxy_val_acc:.2f}% val), but confirmation ranks it first: the proxy "
                        "penalises it")
    return rank, warnings


def report(cands: list[Candidate], runs: dict[str, list[dict]], test_labels: np.ndarray, recipe: Recipe) -> dict:
    """Everything retrain.json records: per config and seed, the winner and why, tau, the verdict."""
    summaries = {c.label: summarize_runs(runs[c.label]) for c in cands}
    winner, challenger, why = select(cands, summaries)
    seed = next(c for c in cands if c.is_seed)
    rank, warnings = ranking(cands, summaries, winner) if recipe.selects else ({}, [])
    if winner.is_seed:
        warnings.append(f"no searched config beat the seed's config on val; the verdict compares the best "
                        f"searched ({challenger.label}) with it")
    correct = [[r["predictions"] == test_labels for r in runs[c.label]] for c in (challenger, seed)]
    comparison = stats.compare(*correct)  # per config, per seed: each test image right or wrong
    comparison["outcome"] = stats.outcome(comparison)
    comparison["starved"] = starved(summaries[seed.label]["test_acc_mean"])  # recipe.starved: the rule
    role = "the confirmed winner" if winner is challenger else "the best searched"
    comparison["verdict"] = stats.verdict(comparison, recipe.epochs, recipe.images(),
                                          (f"{role} ({challenger.label})", "the seed's config"))
    entry = {c.label: {"label": c.label, "config": c.config, "proxy_val_acc": c.proxy_val_acc,
                       "trial_id": c.trial_id, **summaries[c.label]} for c in cands}
    return {"epochs": recipe.epochs, "seeds": summaries[seed.label]["seeds"], "recipe": asdict(recipe),
            "candidates": [entry[c.label] for c in cands],
            "winner": {"label": winner.label, "config": winner.config, "why": why},
            "best": entry[challenger.label], SEED_LABEL: entry[seed.label],
            "comparison": comparison, "ranking": rank, "warnings": warnings,
            "budget": {"epochs": recipe.epochs, "train_images": recipe.images(), "train_split": recipe.train_split,
                       "select_images": N_VAL if recipe.selects else 0, "test_images": len(test_labels),
                       "seeds": recipe.seeds}}


def seed_recipe_lines(rep: dict) -> list[str]:
    """Below the seed's recipe: whether the gap speaks for it (recipe.starved), and the command that measures there."""
    out, seed, hint, full = [], rep[SEED_LABEL]["test_acc_mean"], rep.get("full_recipe"), FULL_RECIPE
    if hint is None:
        return out
    if rep["comparison"].get("starved"):
        out.append(f"the seed's config is far from converged here ({seed:.2f}% on test, against "
                   f"{SEED_RECIPE_TEST_ACC:.2f}% at its own recipe): this gap measures how starved it is at "
                   f"this recipe, not what tuning gains at the seed's (+{SEED_RECIPE_GAP_PP:.2f} pp measured "
                   "there, docs/confirm.md)")
    out.append(f"the gap at the seed's recipe ({full.seeds} seeds x {full.epochs} epochs on {full.images():,} images), "
               f"predicted {format_duration(hint['predicted_s'])} here: {hint['command']}")
    return out


def lines(rep: dict) -> list[str]:
    """What the stage prints at its end: each config's scores, tau, warnings, the winner, the verdict."""
    out = []
    for c in rep["candidates"]:
        proxy = f"proxy {c['proxy_val_acc']:.2f}%" if c["proxy_val_acc"] is not None else "proxy -"
        val = f"val {c['val_acc_mean']:.2f}%, " if c["val_acc_mean"] is not None else ""
        cfg = c["config"]
        out.append(f"  {c['label']:<12} lr {cfg['lr']:.4g}, momentum {cfg['momentum']:.3f}, batch "
                   f"{cfg['batch_size']}: {proxy} -> {val}test {c['test_acc_mean']:.2f} ± {c['test_acc_std']:.2f}%")
    rank = rep["ranking"]
    if rank and math.isfinite(rank["tau"]):
        out.append(f"proxy vs confirmation ranking of {rank['configs']} configs: Kendall tau {rank['tau']:+.2f} "
                   f"(p = {rank['pvalue']:.2g})")
    out += [f"warning: {w}" for w in rep["warnings"]]
    out.append(f"confirmed winner: {rep['winner']['label']} ({rep['winner']['why']})")
    out.append(rep["comparison"]["verdict"])
    out += rep.get("seed_recipe_lines", [])
    if rep["comparison"]["outcome"].endswith("_on_every_seed") and rep.get("source", "").endswith("trials.csv"):
        search, size = Path(rep["source"]).parent, rep["recipe"]["train_size"]
        out.append(f"more seeds, reusing the runs saved here: python -m tuner.retrain --search {search.name} "
                   f"--results {search.parent} --top {len(rep['candidates']) - 1} --epochs {rep['epochs']} "
                   f"--seeds N{f' --train-size {size}' if size else ''} --overwrite")
    return out
