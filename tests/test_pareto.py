import numpy as np
import pytest

from autoprune.core.pareto import hypervolume_2d, pareto_mask


def test_front_equals_hand_computed_set():
    # columns minimised: (-accuracy, latency)
    points = np.array(
        [
            [-0.90, 1.0],  # front
            [-0.80, 0.5],  # front
            [-0.85, 1.2],  # dominated by the first
            [-0.70, 0.5],  # dominated by the second (same latency, worse)
            [-0.60, 0.2],  # front
            [-0.90, 1.0],  # duplicate of a front point: kept
        ]
    )
    assert pareto_mask(points).tolist() == [True, True, False, False, True, True]


def test_single_and_three_objectives():
    assert pareto_mask(np.array([[1.0, 2.0]])).tolist() == [True]
    pts = np.array([[1, 1, 1], [0, 2, 2], [2, 2, 2], [1, 1, 0]])
    assert pareto_mask(pts).tolist() == [False, True, False, True]


def test_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        pareto_mask(np.array([1.0, 2.0]))


def test_hypervolume_of_a_staircase():
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [3.5, 3.5]])
    # reference (4, 4): rectangles 3x1 + 2x1 + 1x1
    assert hypervolume_2d(pts, (4.0, 4.0)) == pytest.approx(6.0)
    assert hypervolume_2d(np.array([[5.0, 5.0]]), (4.0, 4.0)) == 0.0
