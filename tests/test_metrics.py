"""Metrics on hand-worked accuracy matrices (docs/design.md's definitions, 1-based there, 0-based here)."""

from __future__ import annotations

import numpy as np
import pytest

from sweep import metrics as m

# R[t, i]: accuracy on task i after training through task t
R2 = np.array([[0.90, 0.10],
               [0.30, 0.80]])
B2 = np.array([0.12, 0.08])  # the untrained model

R3 = np.array([[0.90, 0.20, 0.10],
               [0.60, 0.95, 0.30],
               [0.40, 0.70, 0.85]])
B3 = np.array([0.10, 0.15, 0.05])


def test_two_tasks_by_hand():
    assert m.stability(R2) == pytest.approx(0.30)  # R[2,1]
    assert m.plasticity(R2) == pytest.approx(0.80)  # R[2,2]
    assert m.average_accuracy(R2) == pytest.approx((0.30 + 0.80) / 2)
    assert m.backward_transfer(R2) == pytest.approx(0.30 - 0.90)
    assert m.forgetting(R2) == pytest.approx(0.90 - 0.30)
    assert m.forward_transfer(R2, B2) == pytest.approx(0.10 - 0.08)  # R[1,2] - b_2
    assert m.retention(R2) == pytest.approx([0.30 / 0.90, 1.0])
    assert m.mean_retention(R2) == pytest.approx(1 / 3)


def test_three_tasks_by_hand():
    assert m.stability(R3) == pytest.approx((0.40 + 0.70) / 2)
    assert m.plasticity(R3) == pytest.approx((0.95 + 0.85) / 2)
    assert m.average_accuracy(R3) == pytest.approx((0.40 + 0.70 + 0.85) / 3)
    assert m.backward_transfer(R3) == pytest.approx(((0.40 - 0.90) + (0.70 - 0.95)) / 2)
    # task 1: best before the end 0.90, final 0.40; task 2: best 0.95 (after task 2), final 0.70
    assert m.forgetting(R3) == pytest.approx(((0.90 - 0.40) + (0.95 - 0.70)) / 2)
    # FWT: (R[1,2] - b_2 + R[2,3] - b_3) / 2
    assert m.forward_transfer(R3, B3) == pytest.approx(((0.20 - 0.15) + (0.30 - 0.05)) / 2)
    assert m.retention(R3) == pytest.approx([0.40 / 0.90, 0.70 / 0.95, 1.0])


def test_all_metrics_names_match_the_schema():
    from sweep.results.schema import METRICS

    assert tuple(m.all_metrics(R3, B3)) == METRICS


def test_metrics_do_not_change_their_input():
    R = R3.copy()
    m.all_metrics(R, B3)
    assert np.array_equal(R, R3)


def test_no_forgetting_and_a_zero_diagonal():
    perfect = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert m.backward_transfer(perfect) == 0 and m.forgetting(perfect) == 0 and m.stability(perfect) == 1
    unlearned = np.array([[0.0, 0.0], [0.0, 1.0]])
    assert np.isnan(m.retention(unlearned)[0]) and m.mean_retention(unlearned) == 0.0


@pytest.mark.parametrize("bad", [np.zeros((1, 1)), np.zeros((2, 3)), np.zeros(4)])
def test_bad_shapes_are_refused(bad):
    with pytest.raises(ValueError):
        m.stability(bad)
