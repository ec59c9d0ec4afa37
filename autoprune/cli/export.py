"""``autoprune export STUDY --device D`` or ``--all-devices``: deploy the best front member per device."""
from __future__ import annotations

import argparse
import json
from typing import Optional

from autoprune.core.errors import AutopruneError

SUMMARY_KEYS = [
    "device", "trial", "accuracy", "accuracy_search", "latency_ms_predicted", "latency_ms_measured",
    "speedup_predicted", "speedup_measured", "size_bytes", "parity", "file",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="rebuild, fine-tune, export and verify the best front member per device")
    p.add_argument("study", help="study directory")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--device", help="one of the study's devices")
    which.add_argument("--all-devices", action="store_true", help="one model per device of the study, with an index")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--max-latency-ms", action="append", metavar="[DEVICE=]MS",
        help="most accurate member at most this slow; with --all-devices give DEVICE=MS per device (repeatable)",
    )
    group.add_argument("--min-accuracy", type=float, help="fastest member at least this accurate")
    group.add_argument("--min-speedup", type=float, help="most accurate member at least this many times faster than the dense model (predicted)")
    p.add_argument("--epochs", type=float, help="override the export fine-tune's epochs")
    p.add_argument("--quantize", choices=["dynamic", "static"], help="also write an int8 model (post-training quantization) and re-measure its accuracy")
    p.add_argument("--calibration-samples", type=int, default=256, help="training samples that calibrate static quantization")
    p.add_argument("--remote", metavar="URL", help="time the export on the device through its profiling agent (python -m autoprune.agent serve)")
    p.add_argument("--token", help="the agent's token (default: $AUTOPRUNE_AGENT_TOKEN)")
    p.add_argument("--out", help="output folder (default: STUDY/exports/DEVICE, or STUDY/exports with --all-devices)")
    p.add_argument("--trust-task", action="store_true", help="import and run the study's module:function task (only for a study whose source you trust)")
    p.set_defaults(func=run)


def parse_budgets(values: Optional[list[str]], per_device: bool) -> dict[str, float] | Optional[float]:
    """``--max-latency-ms`` values: one number, or ``DEVICE=MS`` entries with ``--all-devices``."""
    if not values:
        return {} if per_device else None
    if not per_device:
        if len(values) > 1 or "=" in values[0]:
            raise AutopruneError(f"--max-latency-ms with --device takes one number, got {' '.join(values)}")
        return _number(values[0])
    budgets = {}
    for value in values:
        device, sep, ms = value.partition("=")
        if not sep:
            raise AutopruneError(f"--max-latency-ms with --all-devices takes DEVICE=MS (latency budgets differ per device), got {value!r}")
        budgets[device] = _number(ms)
    return budgets


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise AutopruneError(f"--max-latency-ms: {text!r} is not a number of milliseconds") from None


def run(args: argparse.Namespace) -> int:
    from autoprune.deploy.export import Exporter, ExportRequest, export_all
    from autoprune.results.study import Study

    recipe = None
    if args.epochs is not None:
        recipe = Study(args.study).require().config().export.finetune.model_copy(update={"epochs": args.epochs})
    if args.all_devices:
        if args.remote:
            raise AutopruneError("--remote times one device: use it with --device, not --all-devices")
        index = export_all(
            args.study, parse_budgets(args.max_latency_ms, True), args.min_accuracy, args.min_speedup, recipe, args.out,
            args.quantize, args.calibration_samples, args.trust_task,
        )
        print(json.dumps(index, indent=2))
        return 0
    request = ExportRequest(
        args.device, parse_budgets(args.max_latency_ms, False), args.min_accuracy, args.min_speedup, args.quantize, args.calibration_samples
    )
    if args.remote:
        from autoprune.latency.remote import AgentClient, AgentMeasurer, agent_token

        client = AgentClient(args.remote, agent_token(args.token))
        client.info()  # fail now on a wrong URL or token, not after the fine-tune
        request.measurer, request.measured_on = AgentMeasurer(client), f"agent at {args.remote}"
    card = Exporter(Study(args.study), recipe, args.trust_task).export(request, args.out)
    summary = {k: card[k] for k in SUMMARY_KEYS}
    if card["quantized"]:
        summary["quantized"] = {k: card["quantized"][k] for k in ("mode", "file", "accuracy", "size_bytes", "latency_ms_measured")}
    print(json.dumps(summary, indent=2))
    return 0
