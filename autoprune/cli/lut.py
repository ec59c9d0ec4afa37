"""``autoprune lut validate|show``: check a device's latency table against real measurements."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoprune.latency.devices import DeviceProfile

from autoprune.cli.profile import add_target_arguments, remote_measurer, resolve_target


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lut", help="inspect or validate latency lookup tables")
    lut = p.add_subparsers(dest="lut_command", required=True, metavar="ACTION")

    v = lut.add_parser(
        "validate",
        help="predict plans over the whole pruning range from the table, measure them on the device, report the error",
        description="Predict from the device's table the uniform plan at every ratio of SPACE, its corners and N random plans, "
        "measure each twice on the device beside the dense model, and report the error of their ratios to the dense model: "
        "MAPE, the share within ±10%% and ±5%%, Kendall's tau, per band of measured speedup, with the noise floor beside.",
    )
    add_target_arguments(v)
    v.add_argument("--n", type=int, default=100, help="random candidates, besides the uniform plans and the corners (default 100)")
    v.add_argument("--time-cap", type=float, default=300.0, metavar="SECONDS", help="most seconds per timing pass (default 300)")
    v.add_argument("--seed", type=int, default=12345)
    v.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per candidate (default 3)")
    v.add_argument("--out", help="folder for validation.csv/.json/.png (default: NAME/validation in the user's profile folder)")
    v.set_defaults(func=run_validate)

    s = lut.add_parser("show", help="summarise a device's table: rows per op, versions, calibrations")
    s.add_argument("--device", required=True)
    s.set_defaults(func=run_show)


def run_validate(args: argparse.Namespace) -> int:
    from autoprune.core.paths import user_profiles_dir
    from autoprune.latency.devices import is_shipped, load_device
    from autoprune.latency.lut.profiler import bind_task
    from autoprune.latency.lut.validate import validate

    task, options, space, devices = resolve_target(args)
    target = bind_task(task, space, options)
    measurer = remote_measurer(args)
    for name in devices:
        device = load_device(name)
        result = validate(
            device, target.task.model, target.task.example_input, target.units, target.space,
            n=args.n, seed=args.seed, rounds=args.rounds, measurer=measurer, progress=lambda msg: print(f"  {msg}", flush=True), data=target.data,
            time_cap_s=args.time_cap,
        )
        result.info.update({"task": target.task.name, "space": target.space_path})
        out = Path(args.out) / name if args.out and len(devices) > 1 else Path(args.out) if args.out else validation_dir(device, is_shipped(device), user_profiles_dir())
        paths = result.save(out)
        print(result.summary())
        print(f"  written: {paths['csv']}, {paths['json']}, {paths['plot']}")
    return 0


def validation_dir(device: "DeviceProfile", shipped: bool, user_root: Path) -> Path:
    """``validation/`` in the device's folder; for a shipped (read-only) profile, in the user's folder."""
    return (user_root / device.name if shipped else device.path) / "validation"


def run_show(args: argparse.Namespace) -> int:
    from collections import Counter

    from autoprune.latency.devices import load_device
    from autoprune.latency.lut.table import load_table

    device = load_device(args.device)
    table = load_table(device)
    meta = table.meta
    print(f"{table.table_path}: {len(table)} kernel rows ({', '.join(f'{op} {n}' for op, n in sorted(Counter(r['op'] for r in table.rows.values()).items()))})")
    print(f"  measured on {meta.machine.get('cpu', '?')} ({meta.machine.get('cores', '?')} cores), {meta.backend}, {meta.threads} thread(s), batch {meta.batch_size}, {meta.dtype}")
    print(f"  versions: {', '.join(f'{k} {v}' for k, v in meta.versions.items())}; created {meta.created}, updated {meta.updated}")
    print(f"  call overhead {meta.overhead_ms * 1000:.1f} us; framing {meta.framing}")
    v = meta.validation
    if v:
        print(
            f"  validated on {v.get('cpu', '?')} at {v.get('at', '?')}: {float(v.get('within_10_pct', 0)):.0f}% of {v.get('n', '?')} plans within ±10% "
            f"(noise floor {float(v.get('noise_within_10_pct', 0)):.0f}%), MAPE {float(v.get('mape_pct', 0)):.2f}%"
        )
    else:
        print(f"  never validated: `latency: auto` measures instead; `autoprune profile --device {args.device}` validates it")
    models = sorted({p.model for p in meta.calibration})
    for model in models:
        points = [p for p in meta.calibration if p.model == model]
        cal = table.calibration_for(model, points[0].family)
        print(f"  calibration {model}: {len(points)} points, latency = {cal.overhead_ms:.4f} {cal.per_kernel_ms:+.4f} x kernels + {cal.scale:.3f} x sum + {cal.per_mb_ms:.4f} x weight MB (ms)")
        for flag in cal.flags:
            print(f"    flag: {flag}")
    return 0
