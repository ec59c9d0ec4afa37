"""Deploy: rebuild a front member, fine-tune it longer (gradual pruning, distillation), export it per device, quantise, verify parity and latency on the device."""
from autoprune.deploy.export import Exporter, ExportRequest, export_all, export_member
from autoprune.deploy.gradual import prune_for_export
from autoprune.deploy.verify import with_measured_latency

__all__ = [
    "ExportRequest",
    "Exporter",
    "export_all",
    "export_member",
    "prune_for_export",
    "with_measured_latency",
]
