"""Mixup's blend (quantize.mixup): faces, targets and teachers' probabilities blended with one weight and one
partner per face."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from quantize.distill_config import DistillConfig  # noqa: E402
from quantize.errors import QuantizeError  # noqa: E402
from quantize.mixup import mix_batch, mixing_rng  # noqa: E402


def test_each_face_is_blended_with_the_partner_its_targets_name_and_stays_mostly_itself():
    faces = torch.rand(7, 1, 6, 6)
    labels = torch.arange(7)  # one class per face, so each blended target names the face and its partner
    teacher = torch.softmax(torch.randn(7, 3), dim=1)
    for step in range(20):
        mixed, targets, [(classes, weight, probs)] = mix_batch(
            faces, labels, [([0, 2, 4], 0.5, teacher)], 0.4, 7, mixing_rng(0, 1, step)
        )
        assert (classes, weight) == ([0, 2, 4], 0.5)
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(7))
        for i in range(7):
            row = targets[i].clone()
            lam = float(row[i])
            assert lam >= 0.5, "the face's own label keeps the larger share"
            row[i] = 0
            partner = int(row.argmax()) if lam < 1 else i
            torch.testing.assert_close(mixed[i], lam * faces[i] + (1 - lam) * faces[partner])
            torch.testing.assert_close(probs[i], lam * teacher[i] + (1 - lam) * teacher[partner])


def test_distributions_are_blended_as_they_are_and_the_blend_repeats_for_a_step():
    faces = torch.rand(5, 1, 4, 4)
    votes = torch.softmax(torch.randn(5, 7), dim=1)
    first = mix_batch(faces, votes, [], 0.2, 7, mixing_rng(3, 2, 1))
    again = mix_batch(faces, votes, [], 0.2, 7, mixing_rng(3, 2, 1))
    other = mix_batch(faces, votes, [], 0.2, 7, mixing_rng(3, 2, 2))
    torch.testing.assert_close(first[1].sum(dim=1), torch.ones(5))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_a_mixup_out_of_range_is_refused():
    with pytest.raises(QuantizeError, match="mixup -0.1 must lie in"):
        DistillConfig(mixup=-0.1).check()
    DistillConfig(mixup=0.2).check()
