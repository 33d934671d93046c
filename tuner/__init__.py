"""Ray Tune + Optuna hyperparameter search over mnist_net, in five stages: settings (this folder), plan/,
run/, publish/, confirm/. Imports mnist_net, never the reverse."""

import importlib
import importlib.abc
import importlib.util
import sys

# Ray pickles the searcher, the progress callback, the trainable and the stopper's settings into an experiment
# under the module paths they had then: the flat modules before the stage folders, and the folder modules since
# merged. Each old path still imports, as a module that finds a name where it lives now, so such an experiment
# still resumes.
MOVED = {"budget": ("plan.budget", "space", "settings"), "calibrate": ("plan.search_plan",), "cluster": (
    "run.cluster", "run.storage", "run.runner"), "confirm_runs": ("confirm.runs",), "planning": (
    "plan.search_plan", "confirm.recipe"), "progress": ("run.progress",), "resources": (
    "plan.placement", "worker", "settings"), "results": ("publish.results", "space"), "searcher": ("run.study",),
    "stats": ("confirm.stats",), "study": ("run.study", "space"), "tracking": ("run.tracking",),
    "trainable": ("run.trainable",), "watch": ("run.runner", "publish.writer", "run.study"),
    # the folder layout's modules merged since
    "fidelity": ("space", "settings"), "plan.calibrate": ("plan.search_plan",), "plan.nodes": ("plan.placement",),
    "run.searcher": ("run.study",)}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix(f"{__name__}.")
        return importlib.util.spec_from_loader(fullname, self) if old in MOVED else None

    def exec_module(self, module):
        homes = MOVED[module.__name__.removeprefix(f"{__name__}.")]

        def __getattr__(name):
            if name.startswith("__"):  # inspect and pickle probe dunders: importing here would loop
                raise AttributeError(name)
            for home in homes:
                found = importlib.import_module(f"{__name__}.{home}")
                if hasattr(found, name):
                    return getattr(found, name)
            raise AttributeError(f"module {module.__name__!r} (moved to {', '.join(homes)}) has no {name!r}")

        module.__getattr__ = __getattr__


sys.meta_path.append(_OldPaths())
