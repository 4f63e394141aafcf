"""Shaping functions against the worked examples of shared/methods/rewards.md."""
import pytest

from core.records import Sample
from rewards.shaping import crf, gated_accumulation, length_penalty, par, par_group, par_shape, renorm


def test_par_worked_example():
    assert par_shape(1.0, [0.0, 0.5]) == pytest.approx(0.6768, abs=1e-4)
    assert par_shape(1.0, [0.0]) == pytest.approx(0.7311, abs=1e-4)
    s = Sample("p", "g", [1], [2], [0.0], 0, rewards={"rm": 1.0},
               metadata={"reference_scores": [0.0, 0.5]})
    assert par(s, score_source="rm") == pytest.approx(0.6768, abs=1e-4)
    # the group as references: response 0 (r = 1.0) against the others (0.0, 0.5)
    group = [Sample("p", "g", [1], [2], [0.0], 0, rewards={"rm": r}) for r in (1.0, 0.0, 0.5)]
    shaped = par_group(group, score_source="rm")
    assert shaped[0] == pytest.approx(0.6768, abs=1e-4)
    assert all(0 < x < 1 for x in shaped) and shaped[0] > shaped[2] > shaped[1]
    assert par_group(group[:1], score_source="rm") == [0.5]


def test_crf_worked_example():
    assert crf(1.0, 0.8, alpha=1.0, anneal=0.5, difficulty=0.2) == pytest.approx(1.56)
    assert crf(0.0, 0.8, alpha=1.0, anneal=0.5, difficulty=0.2) == 0.0


def test_gated_accumulation_worked_example():
    assert gated_accumulation([1.0, [0.1, 0.2, 0.1]], gate=0.0) == pytest.approx(1.4)
    assert gated_accumulation([0.0, [0.1, 0.2, 0.1]], gate=0.0) == 0.0


def test_renorm_worked_example():
    assert renorm([0.7], 1.0) == pytest.approx([0.7])
    assert renorm([0.7], 0.0) == pytest.approx([-0.3])


def test_length_penalty():
    s = Sample("p", "g", [1], [2] * 310, [0.0] * 310, 0)
    assert length_penalty(s) == pytest.approx(-0.1)
