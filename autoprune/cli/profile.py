"""``autoprune profile --device NAME --space SPACE.yaml --task TASK``: fill a device's latency table."""
from __future__ import annotations

import argparse
from typing import Any, Optional

from autoprune.core.errors import AutopruneError


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    """The model and search space, given directly or through a study config."""
    p.add_argument("--device", action="append", help="a device profile: the user's or a shipped one (repeatable; default: the config's devices)")
    p.add_argument("--space", help="search-space YAML (default: the config's)")
    p.add_argument("--task", help="built-in task name or module:function (default: the config's)")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE", help="task keyword argument, e.g. model=resnet20 (repeatable)")
    p.add_argument("--config", help="study config (YAML) to take the task, its options, the space and the devices from")
    p.add_argument("--remote", metavar="URL", help="time on the device through its profiling agent (python -m autoprune.agent serve)")
    p.add_argument("--token", help="the agent's token (default: $AUTOPRUNE_AGENT_TOKEN)")


def parse_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are read as YAML scalars (numbers, booleans, strings)."""
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AutopruneError(f"--task-option takes KEY=VALUE, got {item!r}")
        options[key] = yaml.safe_load(value)
    return options


def resolve_target(args: argparse.Namespace) -> tuple[str, dict[str, Any], str, list[str]]:
    """(task, task options, space path, devices) from the flags, falling back on ``--config``."""
    task, options, space, devices = args.task, parse_options(args.task_option), args.space, args.device or []
    if args.config:
        from autoprune.core.config import load_config

        config = load_config(args.config)
        task = task or config.task
        options = {**config.task_options, **options}
        space = space or str(config.search_space_path())
        devices = devices or list(config.devices)
    missing = [flag for flag, value in (("--task", task), ("--space", space), ("--device", devices)) if not value]
    if missing:
        raise AutopruneError(f"give {', '.join(missing)} (or --config with a study config that has them)")
    return task, options, space, devices


def remote_measurer(args: argparse.Namespace) -> Optional[Any]:
    if not args.remote:
        return None
    from autoprune.latency.remote import AgentClient, AgentMeasurer, agent_token

    return AgentMeasurer(AgentClient(args.remote, agent_token(args.token)))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="measure every kernel a search space can produce for a model on a device (latency lookup table)",
        description="Enumerate the kernel configurations SPACE can produce for TASK's model, time the ones the device's "
        "table lacks, and calibrate end-to-end latency. Rows are written as they are measured: rerun to resume.",
    )
    add_target_arguments(p)
    p.add_argument(
        "--calibration", type=int, default=12,
        help="random whole models measured to calibrate the kernel sum, besides the uniform plan at every ratio and the corners (default 12)",
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds at least; more are added until the timings agree (default 3)")
    p.add_argument(
        "--time-cap", type=float, default=120.0, metavar="SECONDS",
        help="most seconds spent adding rounds to the calibration (and half as much to the closing validation) (default 120)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the closing validation (a table without one is not used by `latency: auto`)")
    p.add_argument(
        "--sparse-keys", choices=["dense", "measured"],
        help="a new table keys layers with zeroed weights as their dense kernel (dense, the default: these runtimes run them "
        "with dense kernels) or measures them under keys of their own (measured: to show whether sparsity pays off)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--bundle", metavar="DIR", help="phones: write the models to time, a manifest and a script running TFLite's benchmark_model over adb, instead of timing here")
    p.add_argument("--import", dest="import_results", metavar="RESULTS", help="phones: fill the table from the benchmark_model output the --bundle script wrote (its results folder, or a log)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from autoprune.latency.devices import load_device
    from autoprune.latency.lut.profiler import bind_task, profile

    task, options, space, devices = resolve_target(args)
    target = bind_task(task, space, options)
    measurer = remote_measurer(args)
    if args.bundle or args.import_results:
        if args.remote or len(devices) != 1:
            raise AutopruneError("--bundle and --import take one --device and no --remote")
        from autoprune.latency.remote import bundle_profile, results_measurer

        if not args.import_results:
            profile_args = {"model": target.task.model, "example_input": target.task.example_input, "units": target.units, "space": target.space, "calibration": args.calibration, "rounds": args.rounds}
            bundle, script = bundle_profile(load_device(devices[0]), args.bundle, profile_args)
            print(f"{len(bundle.models)} models to time in {bundle.path}: run `sh {script}` (see its header), then this command with --import {bundle.path / 'results'}")
            return 0
        measurer = results_measurer(args.import_results, devices[0], args.bundle)
    for name in devices:
        device = load_device(name)
        bar = None
        stage_bar: dict[str, Any] = {}

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if args.no_progress:
                return
            if bar is None:
                bar = tqdm(total=total, desc=f"profile {name}", unit="kernel")
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

        def on_rounds(stage: str, rounds: int, spent: float, ci: float, cap: float) -> None:
            """One bar per stage, filling with time towards the cap; the postfix shows the worst interval."""
            if args.no_progress:
                return
            if stage not in stage_bar:
                for other in stage_bar.values():
                    other.close()
                stage_bar[stage] = tqdm(total=round(cap), desc=f"{stage} (cap {cap:.0f} s)", unit="s", bar_format="{desc}: {bar} {n:.0f}/{total:.0f} s {postfix}")
            b = stage_bar[stage]
            b.update(min(spent, cap) - b.n)
            b.set_postfix_str(f"round {rounds}, ratios within ±{ci:.1f}%")

        report = profile(
            device, target.task.model, target.task.example_input, target.units, target.space,
            calibration=args.calibration, rounds=args.rounds, measurer=measurer, progress=progress,
            data=target.data, sparse_keys=args.sparse_keys, time_cap_s=args.time_cap, on_rounds=on_rounds, self_check=not args.no_check,
        )
        for b in stage_bar.values():
            b.close()
        cal = report.calibration
        print(report.summary())
        print(
            f"  calibration ({cal.source}, {cal.points} points): latency = {cal.overhead_ms:.4f} ms "
            f"{cal.per_kernel_ms:+.4f} ms x kernels + {cal.scale:.3f} x kernel sum + {cal.per_mb_ms:.4f} ms x weight MB"
        )
        for flag in cal.flags:
            print(f"  calibration flag: {flag}")
        if report.validation is not None:
            print("  self-check: " + report.validation.summary())
            within = report.validation.metrics["within_10_pct"]
            if within < 80:
                print(
                    f"  this table validated at {within:.0f}% within ±10%: `latency: auto` will measure candidates instead; "
                    f"rerun with a larger --time-cap on a quieter machine"
                )
    return 0
