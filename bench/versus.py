"""autoprune against what a user gets without it: Torch-Pruning with one ratio everywhere,
one epoch of fine-tuning, export. Final accuracy at measured speedup, side by side. Run:

    python -m bench.versus                      # the full run: hours on 2 cores
    python -m bench.versus --quick              # the development run (bench/results/versus_quick.*)
    python -m bench.versus --retime             # time every exported model again, in one pass on a quiet machine

For each model (ResNet-20, the MobileNetV2-style network; task ``fashion-mnist``):

* peers, built with Torch-Pruning's own ``MagnitudePruner`` (L1, the classifier kept):
  ``tp-uniform`` (one ratio everywhere, stock), ``tp-uniform-round8`` (``round_to=8``) and
  ``tp-global`` (``global_pruning=True``), each at a ladder of ratios;
* autoprune: ``autoprune search`` (the library's ``run_study``, the config's defaults, its
  search space and controller included, but for the task, the devices and the budget), validating
  on images held out of the training split (never the test split); then the front members
  nearest 1.5x, 2x, 3x and 4x predicted speedup on each device, and the next faster
  member, pruned from the dense model by the export's code (``prune_for_export``);
* every model, peer or autoprune, gets the same final recipe (``Run.final``: one epoch on
  the whole training split, SGD lr 0.01, cosine) and is scored on the test split (all
  10k images in the full run); the models nearest 2x and 3x get ``--seeds`` seeds; the
  report gives the search's proxy accuracy's rank correlation with the final accuracy;
* with ``--best-recipe``, a second column: distillation from the dense model and gradual
  pruning (3 cubic steps) for autoprune's exports and the peers alike;
* latency is measured, never predicted: each model exported for ``onnxruntime-cpu`` and
  ``tflite`` (batch 1, one thread) and timed in rounds interleaved with the dense model
  exported the same way (median of the rounds' medians);
* the search's cost: wall time of the search and of the exports beside the dense model's
  training time.

Results: ``bench/results/versus.md`` and ``versus.csv`` (one row per model x device x
target speedup x controller: the best peer at that target, the most accurate peer model
whose measured speedup reaches it, against autoprune's best by the same rule), and
``versus_models.csv`` (every model fine-tuned and timed, written row by row, so a killed
run keeps what it had and a rerun skips it). ``--quick`` writes ``versus_quick.*``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("resnet20", "mobilenetv2")
DEVICES = ("onnxruntime-cpu", "tflite")
TARGETS = (1.5, 2.0, 3.0, 4.0)
#: Targets whose models get every seed.
SEEDED_TARGETS = (2.0, 3.0)
#: The goal per target: autoprune's margin over the best peer, in points.
GOALS = {1.5: None, 2.0: 0.5, 3.0: 2.0, 4.0: 2.0}
#: Torch-Pruning's own pruner settings of each peer.
PEERS = {"tp-uniform": {}, "tp-uniform-round8": {"round_to": 8}, "tp-global": {"global_pruning": True}}
TABLE_COLUMNS = [
    "model", "device", "target_speedup", "peer", "peer_accuracy", "peer_speedup",
    "autoprune_accuracy", "autoprune_speedup", "margin_points", "seeds", "std_points",
]


@dataclass(frozen=True)
class Setup:
    """What one run uses: data, dense training, ratios, seeds, search budget, timing rounds."""

    task_options: dict[str, Any]
    peer_ratios: tuple[float, ...]
    seeds: int
    trials: int
    search_steps: Optional[int]
    rounds: int
    stem: str
    above: bool
    search_val_size: int
    notes: str = ""


FULL = Setup(
    task_options={"train_size": None, "val_size": None, "epochs": 10},
    peer_ratios=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85),
    seeds=3,
    trials=40,
    search_steps=None,
    rounds=7,
    stem="versus",
    above=True,
    search_val_size=5000,
    notes="full Fashion-MNIST: 60k training images, the 10k test split for every accuracy",
)
QUICK = Setup(
    task_options={"train_size": 6000, "val_size": 2000, "epochs": 3},
    peer_ratios=(0.5, 0.7, 0.8),
    seeds=2,
    trials=16,
    search_steps=40,
    rounds=5,
    stem="versus_quick",
    above=False,
    search_val_size=1000,
    notes="QUICK MODE (development): 6k training images, 2k test images, dense trained 3 epochs; not the full run",
)


# -- the table: pure functions over model rows -------------------------------------------------
def summarise_models(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per model instance and device: mean and std of accuracy over its seeds.

    ``rows`` has one row per (model, source, name, setting, recipe, seed) with ``accuracy``
    and ``speedup.<device>`` columns; the result has ``device``, ``speedup``,
    ``accuracy`` (mean), ``std`` (sample std, 0 for one seed) and ``seeds``.
    """
    out = []
    keys = ["model", "source", "name", "setting", "recipe"]
    for key, part in rows.groupby(keys, sort=False, dropna=False):
        acc = part["accuracy"].astype(float)
        first = part.iloc[0]
        for device in DEVICES:
            col = f"speedup.{device}"
            if col not in part or pd.isna(first.get(col)):
                continue
            out.append({**dict(zip(keys, key)), "device": device, "speedup": float(first[col]),
                        "accuracy": float(acc.mean()), "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, "seeds": len(acc)})
    return pd.DataFrame(out)


def best_at(models: pd.DataFrame, target: float) -> Optional[pd.Series]:
    """The most accurate model whose measured speedup reaches ``target`` (None when none does)."""
    reaching = models[models["speedup"] >= target]
    if reaching.empty:
        return None
    return reaching.sort_values(["accuracy", "speedup"], ascending=False).iloc[0]


def versus_table(rows: pd.DataFrame, targets: Sequence[float] = TARGETS, recipe: str = "final") -> pd.DataFrame:
    """The comparison: per model, device, target and autoprune controller, the best peer
    against autoprune's best (both by :func:`best_at`), margin in points.

    ``std_points`` is the standard deviation of the margin from the two picks' seeds
    (``sqrt(std_a^2 + std_p^2)``, in points); ``seeds`` the fewer seeds of the two.
    """
    models = summarise_models(rows)
    if models.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS + ["controller"])
    models = models[models.recipe == recipe]
    out = []
    for (model, device), part in models.groupby(["model", "device"], sort=False):
        peers = part[part.source == "peer"]
        for controller in list(part[part.source == "autoprune"].name.unique()) or [None]:  # None: no autoprune export yet
            mine = part[(part.source == "autoprune") & (part.name == controller)]
            for target in targets:
                p, a = best_at(peers, target), best_at(mine, target)
                row = {"model": model, "device": device, "target_speedup": target, "controller": controller,
                       "peer": None if p is None else f"{p['name']} {p['setting']}",
                       "peer_accuracy": None if p is None else p.accuracy, "peer_speedup": None if p is None else p.speedup,
                       "autoprune_accuracy": None if a is None else a.accuracy, "autoprune_speedup": None if a is None else a.speedup,
                       "autoprune_member": None if a is None else a.setting,
                       "margin_points": None, "seeds": None, "std_points": None}
                if p is not None and a is not None:
                    row["margin_points"] = 100 * (a.accuracy - p.accuracy)
                    row["seeds"] = int(min(a.seeds, p.seeds))
                    row["std_points"] = 100 * math.sqrt(a["std"] ** 2 + p["std"] ** 2) if row["seeds"] > 1 else None
                out.append(row)
    return pd.DataFrame(out, columns=TABLE_COLUMNS + ["controller", "autoprune_member"])


def verdict(row: pd.Series) -> str:
    """The cell against the goal: met, or missed by how much."""
    goal = GOALS.get(float(row.target_speedup))
    no_peer, no_mine = pd.isna(row.peer), pd.isna(row.autoprune_accuracy)
    if no_peer and no_mine:
        return "neither reaches this speedup"
    if no_mine:
        return "autoprune has no export reaching this speedup"
    if no_peer:
        return "no peer reaches this speedup (autoprune does)"
    margin = float(row.margin_points)
    if goal is None:
        return f"{margin:+.2f} points (no goal at this target)"
    noisy = not pd.isna(row.std_points) and margin <= float(row.std_points)
    if margin >= goal and not noisy:
        return f"met (goal {goal:+.1f})"
    if margin >= goal:
        return f"margin {margin:+.2f} above goal {goal:+.1f} but within its std {float(row.std_points):.2f}"
    return f"missed by {goal - margin:.2f} points (goal {goal:+.1f})"


# -- building, fine-tuning and timing models ----------------------------------------------------
def cubic_scheduler(pruning_ratio: float, steps: int) -> list[float]:
    """Torch-Pruning's ratio scheduler with autoprune's cubic schedule (gradual pruning)."""
    from autoprune.deploy.gradual import cubic_fractions

    return [0.0] + [pruning_ratio * f for f in cubic_fractions(steps)]


def peer_model(dense, example, ratio: float, options: dict[str, Any], steps: int = 1, between: Optional[Callable[[Any, int], None]] = None):
    """``dense`` pruned by Torch-Pruning's ``MagnitudePruner`` (L1, classifier ignored), in
    ``steps`` steps with ``between(model, step)`` after each but the last."""
    import torch
    import torch_pruning as tp

    model = copy.deepcopy(dense).eval()
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
        ignored_layers=[classifier], iterative_steps=steps, iterative_pruning_ratio_scheduler=cubic_scheduler, **options,
    )
    for step in range(steps):
        pruner.step()
        if between is not None and step < steps - 1:
            between(model, step)
    return model.eval()


class Timer:
    """Exports models for each device and times them interleaved with the dense model."""

    def __init__(self, dense, example, work: Path, rounds: int) -> None:
        from autoprune.latency.backends import get_backend
        from autoprune.latency.devices import load_device
        from autoprune.latency.measured import batched, deployable

        self.work, self.rounds, self.example = work, rounds, example
        self.profiles = {d: load_device(d) for d in DEVICES}
        self.backends = {d: get_backend(p.backend) for d, p in self.profiles.items()}
        self._batched, self._deployable = batched, deployable
        self.dense_paths = {d: self.export(dense, d, work / "dense") for d in DEVICES}

    def export(self, model, device: str, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        backend = self.backends[device]
        x = self._batched(self.example, self.profiles[device].batch_size)
        return backend.export(self._deployable(model, self.example), x, folder / f"model{backend.suffix}")

    def speedup(self, path: Path, device: str) -> tuple[float, float, float]:
        """(speedup, latency_ms, dense latency_ms) of an exported file, interleaved rounds."""
        from autoprune.latency.timing import measure_interleaved

        profile = self.profiles[device]
        x = self._batched(self.example, profile.batch_size).numpy()
        stats, dense = measure_interleaved(self.backends[device].measure, [path, self.dense_paths[device]], x, profile, self.rounds)
        return dense.median_ms / stats.median_ms, stats.median_ms, dense.median_ms


#: Columns of ``versus_models.csv``. ``source`` is ``peer``, ``autoprune``, ``dense`` (the dense
#: model: accuracy, latency, training time in ``wall_s``) or ``search`` (a study's search time).
MODEL_COLUMNS = [
    "model", "source", "name", "setting", "recipe", "seed", "accuracy", "accuracy_search", "params",
    *[f"{kind}.{d}" for kind in ("speedup", "latency_ms", "speedup_card", "speedup_predicted", "exported_trial") for d in DEVICES],
    "wall_s", "note",
]


class ModelRows:
    """``versus_models.csv``: one row per fine-tuned model (and per dense model and search),
    appended as made and read back on resume; processes running other models may append
    to the same file."""

    KEY = ("model", "source", "name", "setting", "recipe", "seed")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reload()

    def reload(self) -> pd.DataFrame:
        self.df = pd.read_csv(self.path) if self.path.exists() and self.path.stat().st_size else pd.DataFrame(columns=MODEL_COLUMNS)
        return self.df

    def _mask(self, key: dict[str, Any]) -> np.ndarray:
        mask = np.ones(len(self.df), dtype=bool)
        for k, v in key.items():
            mask &= self.df[k].astype(str).to_numpy() == str(v)
        return mask

    def has(self, **key: Any) -> bool:
        return bool(not self.df.empty and self._mask(key).any())

    def get(self, **key: Any) -> Optional[pd.Series]:
        if not self.has(**key):
            return None
        return self.df[self._mask(key)].iloc[-1]

    def add(self, row: dict[str, Any]) -> None:
        unknown = set(row) - set(MODEL_COLUMNS)
        if unknown:
            raise KeyError(f"versus_models.csv has no column {sorted(unknown)}")
        line = pd.DataFrame([row], columns=MODEL_COLUMNS)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        line.to_csv(self.path, mode="a", header=new, index=False)
        self.df = pd.concat([self.df, line], ignore_index=True) if not self.df.empty else line


@dataclass
class Run:
    """The run's shared state: setup, recipes, outputs, log."""

    setup: Setup
    args: argparse.Namespace
    rows: ModelRows
    log: Callable[[str], None]

    @property
    def final(self):
        from autoprune.core.recipes import FinetuneRecipe

        return FinetuneRecipe(epochs=1, lr=0.01, batch_size=64, schedule="cosine")

    def recipe(self, name: str):
        """The fine-tune of recipe ``name``: the common final one, or with distillation."""
        from autoprune.core.recipes import Distillation

        return self.final if name == "final" else self.final.model_copy(update={"distill": Distillation()})

    def iterative(self, name: str):
        """Gradual pruning for the best recipe: 3 cubic steps, a third of an epoch (distilled) between."""
        from autoprune.core.recipes import IterativeSchedule

        if name == "final":
            return None
        return IterativeSchedule(steps=3, finetune=self.recipe(name).model_copy(update={"epochs": 1 / 3}))


def task_for(model: str, setup: Setup, work: Path) -> tuple[Any, dict[str, Any]]:
    """The task, and the dense model's training time as ``work/MODEL/dense.json`` records it
    (``train_s``, an optional ``note``): measured by the run that trains it."""
    from autoprune.tasks.base import fashion_mnist

    record = work / model / "dense.json"
    started = time.perf_counter()
    task = fashion_mnist(model=model, **setup.task_options)
    elapsed = time.perf_counter() - started
    if record.exists():
        return task, json.loads(record.read_text())
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"train_s": elapsed}))
    return task, {"train_s": elapsed}


def finetuned_accuracy(run: Run, task, model, recipe_name: str, seed: int) -> float:
    from autoprune.training.distill import training_loss
    from autoprune.training.loop import finetune

    recipe = run.recipe(recipe_name)
    finetune(model, task.train, recipe, training_loss(task, recipe.distill), seed=seed)
    return float(task.metric(model, task.val))


def bench_peers(run: Run, model_name: str, task, timer: Timer, recipes: Sequence[str], work: Path) -> None:
    """Every peer at every ratio: timed once, fine-tuned with seed 0; the ratios nearest the
    seeded targets get the other seeds."""
    import torch

    for recipe in recipes:
        for seed_pass in (0, 1):
            for name, options in PEERS.items():
                for ratio in run.setup.peer_ratios:
                    base = run.rows.get(model=model_name, source="peer", name=name, setting=f"ratio {ratio:g}", recipe="final", seed=0)
                    seeds = [0] if seed_pass == 0 else list(range(1, run.setup.seeds))
                    if seed_pass == 1 and (base is None or not needs_seeds(run, model_name, "peer", name, base)):
                        continue
                    for seed in seeds:
                        key = dict(model=model_name, source="peer", name=name, setting=f"ratio {ratio:g}", recipe=recipe, seed=seed)
                        if run.rows.has(**key):
                            continue
                        started = time.perf_counter()
                        torch.manual_seed(seed)
                        between = None
                        if recipe != "final":
                            schedule = run.iterative(recipe)

                            def between(m, step, schedule=schedule, seed=seed):
                                from autoprune.training.distill import training_loss
                                from autoprune.training.loop import finetune

                                finetune(m, task.train, schedule.finetune, training_loss(task, schedule.finetune.distill), seed=seed + step + 1)

                        pruned = peer_model(task.model, task.example_input, ratio, options, 1 if recipe == "final" else 3, between)
                        row = {**key, "params": sum(p.numel() for p in pruned.parameters())}
                        row.update(timing_columns(run, timer, pruned, work / "peers" / name / f"{ratio:g}", base if (seed > 0 or recipe != "final") else None))
                        row["accuracy"] = finetuned_accuracy(run, task, pruned, recipe, seed)
                        row["wall_s"] = time.perf_counter() - started
                        run.rows.add(row)
                        run.log(f"{model_name} {name} ratio {ratio:g} {recipe} seed {seed}: accuracy {row['accuracy']:.4f}, "
                                + ", ".join(f"{d} {row[f'speedup.{d}']:.2f}x" for d in DEVICES))


def timing_columns(run: Run, timer: Timer, model, folder: Path, known: Optional[pd.Series]) -> dict[str, float]:
    """``speedup.<device>`` and ``latency_ms.<device>``: measured, or copied from ``known``
    (the same network; latency does not depend on the seed or the fine-tune)."""
    out = {}
    for device in DEVICES:
        if known is not None:
            out[f"speedup.{device}"], out[f"latency_ms.{device}"] = known[f"speedup.{device}"], known[f"latency_ms.{device}"]
            continue
        speedup, ms, _ = timer.speedup(timer.export(model, device, folder / device), device)
        out[f"speedup.{device}"], out[f"latency_ms.{device}"] = speedup, ms
    return out


def export_folder(work: Path, row: pd.Series) -> Path:
    """Where the run exported a peer's or a member's pruned model (one folder per device)."""
    if row.source == "peer":
        return work / row.model / "peers" / row["name"] / row.setting.split()[1]
    return work / row.model / row["name"] / "exports" / row.setting.replace(" ", "")


def retime(run: Run, work: Path) -> int:
    """Time every exported model again, interleaved with its dense model, in one pass.

    Latency does not depend on the seed or the fine-tune, so a run that trained over days,
    on a busy machine, can be timed afresh in one sitting on a quiet one: every row of the
    same network (seeds, recipes) takes the new figures. Returns the networks timed."""
    df = run.rows.reload()
    timed = 0
    for model_name in df.model.dropna().unique():
        task, _ = task_for(model_name, run.setup, work)
        timer = Timer(task.model, task.example_input, work / model_name, run.setup.rounds)
        mine = df.model == model_name
        for device in DEVICES:
            _, ms, _ = timer.speedup(timer.dense_paths[device], device)
            df.loc[mine & (df.source == "dense"), f"latency_ms.{device}"] = ms
        networks = df[mine & df.source.isin(["peer", "autoprune"])].drop_duplicates(["source", "name", "setting"])
        for _, row in networks.iterrows():
            folder = export_folder(work, row)
            same = mine & (df.source == row.source) & (df["name"] == row["name"]) & (df.setting == row.setting)
            for device in DEVICES:
                path = folder / device / f"model{timer.backends[device].suffix}"
                if not path.exists():
                    run.log(f"{model_name} {row['name']} {row.setting}: no {path}, {device} timing kept")
                    continue
                speedup, ms, _ = timer.speedup(path, device)
                df.loc[same, f"speedup.{device}"], df.loc[same, f"latency_ms.{device}"] = speedup, ms
            timed += 1
            run.log(f"{model_name} {row['name']} {row.setting}: " + ", ".join(f"{d} {df.loc[same, f'speedup.{d}'].iloc[0]:.2f}x" for d in DEVICES))
    tmp = run.rows.path.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(run.rows.path)
    run.rows.reload()
    return timed


def needs_seeds(run: Run, model: str, source: str, name: str, row: pd.Series) -> bool:
    """Whether a model is, on some device, the one of its kind nearest above a seeded target
    (the smallest measured speedup that still reaches it)."""
    df = run.rows.df
    mine = df[(df.model == model) & (df.source == source) & (df.name == name) & (df.recipe == "final") & (df.seed.astype(int) == 0)]
    for device in DEVICES:
        col = f"speedup.{device}"
        for target in SEEDED_TARGETS:
            reaching = mine[mine[col] >= target]
            if not reaching.empty and reaching.sort_values(col).iloc[0].setting == row.setting:
                return True
    return False


def study_config(model: str, controller: str, run: Run, work: Path) -> Path:
    """The study's YAML: config defaults (the search space and controller included) but for
    task, devices and budget."""
    folder = work / model / controller
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "name": f"versus-{model}-{controller}",
        "task": "fashion-mnist",
        "task_options": {"model": model, **run.setup.task_options, "validation": "train", "val_size": run.setup.search_val_size},
        "devices": list(DEVICES),
        "controller": controller,
        "budget": {"trials": run.setup.trials},
        "study_dir": str(folder / "study"),
    }
    if run.setup.search_steps is not None:
        config["finetune"] = {"max_steps": run.setup.search_steps}
    path = folder / "config.yaml"
    path.write_text(json.dumps(config, indent=2))
    return path


def chosen_members(records, baseline, device: str, above: bool = True) -> dict[int, str]:
    """Front members on ``device`` nearest each target's predicted speedup, and the next
    faster member beside each (predictions land off target): trial number -> label."""
    from autoprune.results.front import device_front

    members = device_front(records, device)
    dense_ms = baseline["latency_ms"][device]
    speed = {m.number: dense_ms / m.latency_ms[device] for m in members}
    out: dict[int, str] = {}
    for target in TARGETS:
        near = min(members, key=lambda m: abs(math.log(speed[m.number] / target)))
        out.setdefault(near.number, f"near {target:g}x")
        faster = sorted((m for m in members if speed[m.number] > speed[near.number]), key=lambda m: speed[m.number])
        if above and faster:
            out.setdefault(faster[0].number, f"above {target:g}x")
    return out


def bench_autoprune(run: Run, model_name: str, controller: str, task, timer: Timer, recipes: Sequence[str], work: Path) -> None:
    """Search (or resume), then give the chosen members the peers' treatment.

    The search validates on images held out of the training split (``validation: train``),
    so the test split that every reported accuracy comes from plays no part in choosing.
    Each chosen member is pruned by the export's own code (``prune_for_export``: one shot,
    or gradual with the best recipe) from the same dense model, on the bench's task (the
    whole training split), then fine-tuned, scored, exported and timed exactly as the peers.
    """
    import dataclasses

    import torch

    from autoprune.core.config import load_config
    from autoprune.core.plan import Plan
    from autoprune.deploy.gradual import prune_for_export
    from autoprune.engine.context import build_context
    from autoprune.engine.executor import run_study

    from .export import profile_model

    path = study_config(model_name, controller, run, work)
    profile_model(model_name, path, argparse.Namespace(work=str(work)), run.log)
    started = time.perf_counter()
    config = load_config(path)
    study = run_study(config, progress=False)
    search_s = time.perf_counter() - started
    records, baseline = study.records(), study.baseline()
    if not run.rows.has(model=model_name, source="search", name=controller, setting=f"{len(records)} trials"):
        run.rows.add({"model": model_name, "source": "search", "name": controller, "setting": f"{len(records)} trials", "recipe": "", "seed": 0, "wall_s": search_s})
    run.log(f"{model_name} {controller}: {len(records)} trials ({search_s:.0f} s this run)")
    members: dict[int, Any] = {}
    for device in DEVICES:
        for number in chosen_members(records, baseline, device, run.setup.above):
            members[number] = next(r for r in records if r.number == number)
    ctx = dataclasses.replace(build_context(config), task=task)
    for recipe in recipes:
        for seed_pass in (0, 1):
            for number, member in members.items():
                setting = f"trial {number}"
                base = run.rows.get(model=model_name, source="autoprune", name=controller, setting=setting, recipe="final", seed=0)
                if seed_pass == 1 and (base is None or not needs_seeds(run, model_name, "autoprune", controller, base)):
                    continue
                for seed in ([0] if seed_pass == 0 else range(1, run.setup.seeds)):
                    key = dict(model=model_name, source="autoprune", name=controller, setting=setting, recipe=recipe, seed=seed)
                    if run.rows.has(**key):
                        continue
                    t = time.perf_counter()
                    torch.manual_seed(seed)
                    pruned = prune_for_export(ctx, Plan.from_dict(member.plan), run.iterative(recipe), seed)
                    row = {**key, "params": sum(p.numel() for p in pruned.parameters()), "accuracy_search": member.accuracy}
                    for device in DEVICES:
                        row[f"speedup_predicted.{device}"] = baseline["latency_ms"][device] / member.latency_ms[device]
                    known = base if (seed > 0 or recipe != "final") else None
                    row.update(timing_columns(run, timer, pruned, work / model_name / controller / "exports" / setting.replace(" ", ""), known))
                    row["accuracy"] = finetuned_accuracy(run, task, pruned, recipe, seed)
                    row["wall_s"] = time.perf_counter() - t
                    run.rows.add(row)
                    run.log(f"{model_name} {controller} {setting} {recipe} seed {seed}: accuracy {row['accuracy']:.4f} (search {member.accuracy:.4f}), "
                            + ", ".join(f"{d} {row[f'speedup.{d}']:.2f}x (predicted {row[f'speedup_predicted.{d}']:.2f}x)" for d in DEVICES))


# -- the report --------------------------------------------------------------------------------
def write_report(run: Run, machine: str, wall_s: float) -> None:
    from autoprune.core.config import Config

    df = run.rows.reload()
    dense = {r.model: r for _, r in df[df.source == "dense"].groupby("model").tail(1).iterrows()}
    searches = df[df.source == "search"]
    df = df[df.source.isin(["peer", "autoprune"])]
    setup = run.setup
    table = versus_table(df)
    table.to_csv(RESULTS / f"{setup.stem}.csv", index=False)
    best = versus_table(df, recipe="best") if run.args.best_recipe else pd.DataFrame()
    f = lambda v, d=2: "–" if pd.isna(v) else f"{v:.{d}f}"  # noqa: E731
    pct = lambda v: "–" if pd.isna(v) else f"{100 * v:.2f}"  # noqa: E731
    peers = ", ".join(f"`{k}` {v or '(stock)'}" for k, v in PEERS.items())
    command = "python -m bench.versus" + (" --quick" if run.args.quick else "") + f" --controllers {' '.join(run.args.controllers)}" + (" --best-recipe" if run.args.best_recipe else "")
    lines = [
        f"# autoprune vs Torch-Pruning: final accuracy at measured speedup{' (QUICK MODE)' if run.args.quick else ''}",
        "",
    ]
    if run.args.quick:
        lines += [
            "**This is the quick development mode, not the full run**: a 6k-image training subset, 2k test images, "
            "dense models trained 3 epochs (below the 92.5% the full run requires), peers at ratios 0.5/0.7/0.8 only, 16 search trials of 40 steps, 2 seeds. "
            "The full run (`python -m bench.versus`, hours on 2 cores) writes `bench/results/versus.md`; its results are pending.",
            "",
        ]
    lines += [
        f"Rerun: `{command}` (resumes: models already in `{setup.stem}_models.csv` are skipped; delete it to start over). "
        f"Setup: {setup.notes}. Peers: Torch-Pruning {peers}, "
        f"L1 magnitude, classifier kept, ratios {', '.join(f'{r:g}' for r in setup.peer_ratios)}. autoprune: `autoprune search` "
        f"(config defaults, the search space `{Config().search_space}` and the controller included, but task, devices, "
        f"{setup.trials} trials{f' of {setup.search_steps} steps' if setup.search_steps else ''}, validating on {setup.search_val_size} images held out of the training split), "
        "then the front members nearest 1.5x/2x/3x/4x predicted speedup on each device and the next faster one, pruned from the dense model by the export's code. "
        "Final recipe for every model: one epoch on the whole training split, SGD lr 0.01 momentum 0.9, cosine, batch 64, scored on the test split. Latency measured on each runtime (batch 1, one thread), "
        f"{setup.rounds} rounds interleaved with the dense model, median of the rounds' medians. Best peer at a target = the most accurate "
        "peer model whose measured speedup reaches it; autoprune's best likewise; margin = autoprune - peer, in points; "
        "`std_points` = sqrt(std_a^2 + std_p^2) over the seeds (shown when both picks have more than one seed).",
        "",
        "## Machine",
        "",
        machine,
        "",
        "## Dense models",
        "",
        "| model | accuracy | training s | " + " | ".join(f"{d} ms" for d in DEVICES) + " |",
        "|---|---|---|" + "---|" * len(DEVICES),
    ]
    for model, info in dense.items():
        lines.append(f"| {model} | {pct(info.accuracy)} | {info.wall_s:.0f} | " + " | ".join(f(info[f"latency_ms.{d}"], 4) for d in DEVICES) + " |")
    lines += [f"\n{model}: {info.note}" for model, info in dense.items() if not pd.isna(info.note)]
    lines += ["", "## Final recipe (one epoch, same for everyone)", ""]
    lines += _table_lines(table, f, pct)
    if not best.empty:
        lines += ["", "## Best recipe (distillation from the dense model, 3 gradual pruning steps), peers given the same", ""]
        lines += _table_lines(best, f, pct)
    lines += ["", "## Does the search's proxy rank like the final accuracy?", "",
              "Spearman rank correlation between a member's accuracy in the search (short fine-tune, held-out training images) and its final accuracy "
              "(final recipe, seed 0, test split), over the members of each study:", "",
              "| model | controller | members | rank correlation |", "|---|---|---|---|"]
    for (model, controller), part in df[(df.source == "autoprune") & (df.recipe == "final") & (df.seed.astype(int) == 0)].groupby(["model", "name"], sort=False):
        rho = part.accuracy_search.rank().corr(part.accuracy.rank()) if len(part) > 2 else float("nan")
        lines.append(f"| {model} | {controller} | {len(part)} | {f(rho)} |")
    lines += ["", "## Search cost", "", "| model | controller | trials | search s | export s (all members, recipes, seeds) | dense training s |", "|---|---|---|---|---|---|"]
    for (model, controller), part in searches.groupby(["model", "name"], sort=False):
        exports = df[(df.model == model) & (df.source == "autoprune") & (df.name == controller)].wall_s.sum()
        train = dense[model].wall_s if model in dense else float("nan")
        lines.append(f"| {model} | {controller} | {part.setting.iloc[-1]} | {part.wall_s.sum():.0f} | {exports:.0f} | {train:.0f} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["", f"Wall time of this invocation: {wall_s / 60:.1f} min; 1-minute load when the report was written: {load:.2f} "
              "(times include waiting for the shared CPU).", ""]
    lines += ["## Every model", "", f"`{setup.stem}_models.csv`: one row per model, recipe and seed (accuracy, measured speedups and latencies per device, parameters).", ""]
    if run.args.notes:
        lines += ["## Notes", "", run.args.notes.strip(), ""]
    (RESULTS / f"{setup.stem}.md").write_text("\n".join(lines))


def _table_lines(table: pd.DataFrame, f, pct) -> list[str]:
    lines = ["| model | device | target | controller | best peer | peer acc | peer speedup | autoprune member | autoprune acc | autoprune speedup | margin (points) | seeds | std | goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(
            f"| {r.model} | {r.device} | {r.target_speedup:g}x | {'–' if pd.isna(r.controller) else r.controller} | {'–' if pd.isna(r.peer) else r.peer} | {pct(r.peer_accuracy)} | {f(r.peer_speedup)} | "
            f"{'–' if pd.isna(r.autoprune_member) else r.autoprune_member} | {pct(r.autoprune_accuracy)} | {f(r.autoprune_speedup)} | {f(r.margin_points)} | "
            f"{'–' if pd.isna(r.seeds) else int(r.seeds)} | "
            f"{f(r.std_points)} | {verdict(r)} |"
        )
    return lines


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the development run: small data, few ratios, seeds and trials")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--controllers", nargs="+", default=None, help="autoprune controllers to run (default: the config's default controller)")
    parser.add_argument("--best-recipe", action="store_true", help="also the second column: distillation and gradual pruning for everyone")
    parser.add_argument("--notes", default="", help="a markdown paragraph appended to the report (what this run left out, and why)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the markdown and the table from the models CSV, running nothing")
    parser.add_argument("--retime", action="store_true", help="time every exported model again, interleaved with the dense model, in one pass (on a quiet machine), then rewrite the report")
    parser.add_argument("--only", choices=("peers", "autoprune"), default=None, help="run only the peers (they do not depend on autoprune's defaults) or only autoprune's search and exports")
    parser.add_argument("--work", default=None, help="work folder (studies, exports, profiles, dense cache); default runs/bench-versus[-quick]")
    args = parser.parse_args(argv)
    setup = QUICK if args.quick else FULL
    if args.controllers is None:
        from autoprune.core.config import Config

        args.controllers = [Config().controller]
    work = Path(args.work or ("runs/bench-versus-quick" if args.quick else "runs/bench-versus")).resolve()
    os.environ.setdefault("AUTOPRUNE_CACHE", str(work / "cache"))

    from .export import fresh_profiles
    from .machine import machine_markdown

    fresh_profiles(argparse.Namespace(work=str(work)))
    machine = machine_markdown()
    started = time.perf_counter()
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    run = Run(setup, args, ModelRows(RESULTS / f"{setup.stem}_models.csv"), log)
    if args.report_only or args.retime:
        if args.retime:
            log(f"timed {retime(run, work)} networks again")
        write_report(run, machine, time.perf_counter() - started)
        return
    recipes = ["final"] + (["best"] if args.best_recipe else [])
    for model_name in args.models:
        task, trained = task_for(model_name, setup, work)
        timer = Timer(task.model, task.example_input, work / model_name, setup.rounds)
        if not run.rows.has(model=model_name, source="dense"):
            row = {"model": model_name, "source": "dense", "name": "dense", "setting": "", "recipe": "", "seed": 0,
                   "accuracy": float(task.metric(task.model, task.val)), "wall_s": trained["train_s"], "note": trained.get("note"),
                   "params": sum(p.numel() for p in task.model.parameters())}
            for device in DEVICES:
                _, ms, _ = timer.speedup(timer.dense_paths[device], device)
                row[f"latency_ms.{device}"], row[f"speedup.{device}"] = ms, 1.0
            run.rows.add(row)
            log(f"{model_name}: dense accuracy {row['accuracy']:.4f}, trained in {trained['train_s']:.0f} s")
        if args.only != "autoprune":
            bench_peers(run, model_name, task, timer, recipes, work / model_name)
            write_report(run, machine, time.perf_counter() - started)
        for controller in args.controllers if args.only != "peers" else ():
            bench_autoprune(run, model_name, controller, task, timer, recipes, work)
            write_report(run, machine, time.perf_counter() - started)
    write_report(run, machine, time.perf_counter() - started)
    log(f"wrote {RESULTS / (setup.stem + '.md')}")


if __name__ == "__main__":
    main()
