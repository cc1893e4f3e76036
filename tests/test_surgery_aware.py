"""pgd-surgery-aware: PGD whose gradient also moves Pixel Surgery's top-k choice (issue 18)."""

from __future__ import annotations

import pytest
import torch

from pssr.attacks import create_attack
from pssr.attacks.surgery_aware import SurgeryAwareView, surgery_aware_view
from pssr.defense.pssr import PSSR, PSSRConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def defense_data():
    from pssr.testing import digits_cnn

    clf, data = digits_cnn(epochs=1)
    torch.manual_seed(0)
    cfg = PSSRConfig(scorer="learned", ratio=0.2, gen_width=8, gen_depth=1, scorer_width=4, scorer_depth=1)
    return PSSR(clf, cfg, (1, 8, 8), 10).eval(), data


def test_the_view_has_the_defense_forward_and_a_gradient_through_the_scorer(defense_data):
    defense, data = defense_data
    x = data.test.x[:16].clone().requires_grad_(True)
    view = SurgeryAwareView(defense)
    out = view(x)
    assert torch.equal(out, defense(x.detach()))  # the value is the defense's, bit for bit
    out.logsumexp(1).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    m = view.soft_mask(x.detach()).detach()
    assert float(m.min()) >= 0 and float(m.max()) <= 1
    # the relaxed mask agrees with the hard one on most pixels (it is a sigmoid around the threshold)
    agree = ((m > 0.5).float() == defense.mask(x.detach())).float().mean()
    assert float(agree) > 0.9
    # the scorer's parameters see a gradient through the relaxed mask: the mask is no longer constant
    scorer_grads = torch.autograd.grad(view.relaxed(x.detach()).sum(), list(defense.scorer.parameters()))
    assert any(float(g.abs().sum()) > 0 for g in scorer_grads)


def test_the_attack_stays_in_budget_and_falls_back_to_the_model(defense_data):
    defense, data = defense_data
    x, y = data.test.x[:16], data.test.y[:16]
    x_adv = create_attack("pgd-surgery-aware", defense, eps=0.1, steps=5)(x, y)
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6 and 0 <= float(x_adv.min()) <= float(x_adv.max()) <= 1
    assert surgery_aware_view(defense.classifier) is defense.classifier
    with pytest.raises(ValueError, match="no top-k Pixel Surgery"):
        SurgeryAwareView(defense.classifier)
