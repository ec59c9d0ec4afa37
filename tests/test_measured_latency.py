"""Measured latency beside the dense model: one scale for a study's candidates and its baseline."""
import pickle

import torch

from autoprune.latency import MeasuredLatency, load_device


def test_candidates_are_reported_on_the_scale_of_the_reference(tiny_resnet_task):
    estimator = MeasuredLatency(load_device("onnxruntime-cpu"))
    model, x = tiny_resnet_task.model.eval(), tiny_resnet_task.example_input
    estimator.set_reference(model)
    assert estimator.reference_ms is None
    first = estimator.latency_ms(model, x)
    # the reference's first timing sets the scale, and stays it
    scale = estimator.reference_ms
    assert first > 0 and scale > 0
    half = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 10)).eval()
    assert estimator.latency_ms(half, x) > 0 and estimator.reference_ms == scale
    # the exported reference stays with this process: a copy sent elsewhere exports its own
    copy = pickle.loads(pickle.dumps(estimator))
    assert copy._exported == {} and copy.reference_ms == scale and copy.latency_ms(model, x) > 0
