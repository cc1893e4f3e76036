"""pssr.utils.runtime: the one eval-mode context every package uses."""

from __future__ import annotations

import pytest
from torch import nn

from pssr.utils import eval_mode


def _model() -> nn.Module:
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    m.train()
    m[1].eval()  # a caller's BatchNorm kept frozen inside a model in train mode
    m[2].weight.requires_grad_(False)
    return m


def test_eval_mode_restores_each_submodule_and_leaves_parameters_alone():
    m, other = _model(), nn.Linear(2, 2)
    before = [c.training for c in m.modules()]
    with eval_mode(m, None, other):
        assert not any(c.training for c in m.modules()) and not other.training
        assert m[0].weight.requires_grad and not m[2].weight.requires_grad
    assert [c.training for c in m.modules()] == before and other.training


@pytest.mark.parametrize("requires_grad", [False, True])
def test_eval_mode_sets_and_restores_requires_grad_even_on_error(requires_grad):
    m = _model()
    shared = nn.Sequential(m[0])  # a view sharing m's parameters: seen once, restored once
    before = [p.requires_grad for p in m.parameters()]
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(m, shared, requires_grad=requires_grad):
            assert all(p.requires_grad == requires_grad for p in m.parameters())
            raise RuntimeError("inside")
    assert [p.requires_grad for p in m.parameters()] == before
    assert m.training and not m[1].training
