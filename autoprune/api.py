"""The Python API: run, open, query and export studies, in the manner of Optuna's
``optuna.create_study`` / ``optuna.load_study``.

It sits above every room (see docs/architecture.md): a :class:`Study` here is the study
directory of :mod:`autoprune.results` with the verbs that need the search and the export.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pandas as pd

from autoprune.core.config import Config, load_config, validate_config
from autoprune.core.errors import ConfigError
from autoprune.deploy.export import Exporter, ExportRequest, ExportResult
from autoprune.deploy.verify import with_measured_latency
from autoprune.engine.executor import run_study
from autoprune.results import study as _study
from autoprune.results.front import front as _front


class Study(_study.Study):
    """A study directory with the verbs of the Python API: query the front, export, report."""

    def front(
        self,
        device: Optional[str] = None,
        max_latency_ms: Optional[float] = None,
        min_accuracy: Optional[float] = None,
        measure: bool = False,
        trust_task: bool = False,
    ) -> pd.DataFrame:
        """The Pareto front, one row per member and device (see :func:`autoprune.results.front.front`);
        with ``measure``, each member is also timed on its device beside the dense model
        (see :func:`autoprune.deploy.verify.with_measured_latency`)."""
        df = _front(self, device=device, max_latency_ms=max_latency_ms, min_accuracy=min_accuracy)
        return with_measured_latency(df, self, trust_task) if measure else df

    def export(
        self,
        device: str,
        max_latency_ms: Optional[float] = None,
        min_accuracy: Optional[float] = None,
        min_speedup: Optional[float] = None,
        epochs: Optional[float] = None,
        quantize: Optional[str] = None,
        out_dir: Optional[str | Path] = None,
    ) -> "ExportResult":
        """Rebuild, fine-tune, export and verify the front member chosen for ``device``: the most
        accurate one within ``max_latency_ms`` or ``min_speedup``, else the fastest one reaching
        ``min_accuracy``, else the most accurate (see :mod:`autoprune.deploy.export`)."""
        recipe = self.require().config().export.finetune
        if epochs is not None:
            recipe = recipe.model_copy(update={"epochs": epochs})
        out = Path(out_dir) if out_dir else self.exports_dir / device
        card = Exporter(self, recipe).export(ExportRequest(device, max_latency_ms, min_accuracy, min_speedup, quantize), out)
        return ExportResult.from_card(card, out)

    def report(self, out_dir: Optional[str | Path] = None, html: bool = False) -> list[Path]:
        """Write a Pareto-front plot per device and ``report.md`` (with ``html``, the front
        explorer page ``explorer.html`` too); returns the files written."""
        from autoprune.results.report import (
            write_report,  # matplotlib, only when a report is asked for
        )

        return [Path(p) for p in write_report(self.path, out_dir, html)]


def search(config: Config | str | Path | dict[str, Any], progress: bool = False, backend: str = "local", **ray_options: Any) -> Study:
    """Run (or resume) a study and return it: the library's entry point (``autoprune search``).

    ``config`` is a :class:`~autoprune.core.config.Config`, the path of a study config (YAML), or
    its keys as a dict (relative paths then start from the working directory). The study
    directory keeps every trial, so calling again with the same config resumes. ``backend``
    ``"ray"`` runs the trials on Ray Tune, with ``ray_options`` the fields of
    :class:`~autoprune.engine.ray_executor.RayOptions` (``address``, ``max_concurrent``, ...).
    """
    if isinstance(config, dict):
        config = validate_config(config)
    elif not isinstance(config, Config):
        config = load_config(config)
    if backend == "ray":
        from autoprune.engine.ray_executor import RayOptions, run_study_ray

        return Study(run_study_ray(config, RayOptions(**ray_options), progress=progress).path)
    if backend != "local" or ray_options:
        raise ConfigError(f"backend: expected 'local' or 'ray' (Ray options need 'ray'), got {backend!r}")
    return Study(run_study(config, progress=progress).path)


def load_study(path: str | Path) -> Study:
    """The study in directory ``path`` (written by :func:`autoprune.search` or ``autoprune search``)."""
    study = Study(path)
    study.require()
    return study
