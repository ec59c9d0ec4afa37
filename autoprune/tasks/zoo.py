"""torchvision's image classification models as users build them, on a CPU-only torch.

``torchvision.models.<name>(num_classes=...)`` builds a network in pure Python, but the
torchvision wheel on the package index is built for CUDA: its C extension (detection ops
such as ``nms``) does not load beside a CPU-only torch. torchvision itself copes with a
missing extension (``torchvision.extension._has_ops()`` turns False and the ops raise when
called), except that ``torchvision/_meta_registrations.py`` registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms`` unconditionally, and ``register_fake``
needs the operator to exist: ``import torchvision`` fails with ``operator torchvision::nms
does not exist`` (pytorch/vision#9085; the guard is proposed upstream in pytorch/vision#9649).
transformers imports torchvision whenever it is installed, so the same failure breaks
``transformers.BertModel`` too.

:func:`prepare_torchvision` (run when :mod:`autoprune.tasks` is imported, in milliseconds:
it does not import torchvision) tries to load the extension as torchvision would; only when
it cannot be loaded does it declare the two operators' schemas with the public
``torch.library`` API, without kernels (calling ``nms`` still raises torchvision's own
"Couldn't load custom C++ ops"). Nothing of torch or torchvision is patched, and an install
whose extension loads is used untouched.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import torch
from torch import nn

from autoprune.core.errors import ConfigError

log = logging.getLogger(__name__)

#: The schemas torchvision's C extension declares for the operators its Python side
#: registers fake kernels for without checking that the extension loaded.
_UNGUARDED_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
#: Kept alive for the process: a ``torch.library.Library`` removes its definitions when collected.
_schema_library: Optional[torch.library.Library] = None


def _declare_missing_schemas() -> None:
    global _schema_library
    if _schema_library is not None:
        return
    log.info("torchvision's C extension does not load beside torch %s: its models work, its detection ops do not", torch.__version__)
    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _UNGUARDED_SCHEMAS.values():
        library.define(schema)
    _schema_library = library


def _extension_loads(folder: Path) -> bool:
    """Whether torchvision's C extension in ``folder`` loads here (loading it as torchvision does)."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / f"_C{suffix}"
        if path.is_file():
            try:
                torch.ops.load_library(str(path))
                return True
            except (OSError, ImportError, RuntimeError) as err:
                log.debug("torchvision's C extension %s does not load: %s", path, err)
                return False
    return False


def prepare_torchvision() -> None:
    """Make ``import torchvision`` work where its C extension does not load (see the module doc)."""
    if _schema_library is not None or "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    if not _extension_loads(Path(next(iter(spec.submodule_search_locations)))):
        _declare_missing_schemas()


def import_torchvision() -> ModuleType:
    """``torchvision``, imported even where its C extension does not load."""
    prepare_torchvision()
    try:
        return importlib.import_module("torchvision")
    except ModuleNotFoundError as err:
        raise ConfigError("torchvision is not installed (pip install 'autoprune[test]' or pip install torchvision)") from err


def classification_models() -> list[str]:
    """Names of torchvision's image classification model builders."""
    torchvision = import_torchvision()
    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """``torchvision.models.<name>(num_classes=num_classes, **kwargs)``, random weights (nothing downloaded)."""
    known = classification_models()
    if name not in known:
        raise ConfigError(f"torchvision model {name!r}: not an image classification model; known: {', '.join(known)}")
    torchvision = import_torchvision()
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
