"""Attack agreement with ART and pyautoattack on the model of tests/test_attacks.py (tiny-cnn, digits, 15 epochs).

Run: .venv/bin/python benchmarks/attack_agreement.py  (prints ours vs reference robust accuracy per attack; minutes)
"""

import math
import time
import warnings

import torch

torch.set_num_threads(1)
warnings.simplefilter("ignore")
from art.attacks import evasion
from art.estimators.classification import PyTorchClassifier
from pyautoattack.square import SquareAttack
from torch import nn

from pssr.attacks import create_attack, project
from pssr.testing import accuracy, digits_cnn

model, data = digits_cnn()  # tiny-cnn, 15 epochs of Adam on the digits
x, y = data.test.x, data.test.y


def acc(xx, yy=y):
    return accuracy(model, xx, yy)


print(f"clean accuracy on 359 test digits: {acc(x):.4f}")
clf = PyTorchClassifier(
    model,
    loss=nn.CrossEntropyLoss(),
    input_shape=(1, 8, 8),
    nb_classes=10,
    clip_values=(0.0, 1.0),
    device_type="cpu",
)


def art(a, xx, yy, eps, norm):
    t = time.process_time()
    r = acc(project(torch.from_numpy(a.generate(xx.numpy(), y=yy.numpy())).float(), xx, eps, norm), yy)
    return r, time.process_time() - t


def ours(name, xx, yy, **kw):
    t = time.process_time()
    r = acc(create_attack(name, model, **kw)(xx, yy), yy)
    return r, time.process_time() - t


def row(label, a, b):
    print(
        f"{label:62s} ours={a[0] * 100:6.2f}% ({a[1]:5.1f}s cpu)  ref={b[0] * 100:6.2f}% ({b[1]:6.1f}s cpu)  diff={100 * (a[0] - b[0]):+.2f} pts",
        flush=True,
    )


for norm, eps in (("linf", 0.1), ("l2", 1.0)):
    an = math.inf if norm == "linf" else 2
    row(
        f"FGSM {norm} eps={eps} (ART FastGradientMethod)",
        ours("fgsm", x, y, eps=eps, norm=norm),
        art(evasion.FastGradientMethod(clf, norm=an, eps=eps, batch_size=512), x, y, eps, norm),
    )
    for steps in (20, 40):
        row(
            f"PGD {norm} eps={eps} {steps} steps a=eps/4 no rand start (ART PGD)",
            ours("pgd", x, y, eps=eps, norm=norm, steps=steps, alpha=eps / 4, random_start=False),
            art(
                evasion.ProjectedGradientDescentPyTorch(
                    clf,
                    norm=an,
                    eps=eps,
                    eps_step=eps / 4,
                    max_iter=steps,
                    num_random_init=0,
                    batch_size=512,
                    verbose=False,
                ),
                x,
                y,
                eps,
                norm,
            ),
        )
    row(
        f"MI-FGSM {norm} eps={eps} 10 steps mu=1 (ART MomentumIterative)",
        ours("mifgsm", x, y, eps=eps, norm=norm, steps=10, decay=1.0),
        art(
            evasion.MomentumIterativeMethod(
                clf,
                norm=an,
                eps=eps,
                eps_step=eps / 10,
                max_iter=10,
                decay=1.0,
                batch_size=512,
                verbose=False,
            ),
            x,
            y,
            eps,
            norm,
        ),
    )
row(
    "BIM linf eps=0.1 10 steps (ART BasicIterativeMethod)",
    ours("bim", x, y, eps=0.1, steps=10),
    art(
        evasion.BasicIterativeMethod(
            clf, eps=0.1, eps_step=0.0125, max_iter=10, batch_size=512, verbose=False
        ),
        x,
        y,
        0.1,
        "linf",
    ),
)
row(
    "DeepFool l2 clipped to 1.0, 50 steps, overshoot 0.02 (ART DeepFool)",
    ours("deepfool", x, y, eps=1.0, norm="l2"),
    art(
        evasion.DeepFool(clf, max_iter=50, epsilon=0.02, nb_grads=10, batch_size=512, verbose=False),
        x,
        y,
        1.0,
        "l2",
    ),
)
for norm, eps in (("linf", 0.1), ("l2", 1.0)):

    def sq(eps=eps, norm=norm):
        t = time.process_time()
        s = SquareAttack(
            model,
            p_init=0.8,
            n_queries=1000,
            eps=eps,
            norm="Linf" if norm == "linf" else "L2",
            seed=0,
            device="cpu",
            resc_schedule=True,
        )
        with torch.random.fork_rng():
            r = acc(s.perturb(x, y))
        return r, time.process_time() - t

    row(
        f"Square {norm} eps={eps} 1000 queries p_init=0.8 (pyautoattack Square)",
        ours("square", x, y, eps=eps, norm=norm, n_queries=1000),
        sq(),
    )
xs, ys = x[:120], y[:120]
row(
    "CW-L2 clip 1.0, 100 steps x 6, c0=0.1; ours lr 0.1 vs ART lr 0.01 (120 img)",
    ours("cw", xs, ys, eps=1.0),
    art(
        evasion.CarliniL2Method(
            clf,
            confidence=0.0,
            learning_rate=0.01,
            binary_search_steps=6,
            max_iter=100,
            initial_const=0.1,
            batch_size=512,
            verbose=False,
        ),
        xs,
        ys,
        1.0,
        "l2",
    ),
)
row(
    "CW-L2 same but ours with the paper's lr 0.01 (120 img)",
    ours("cw", xs, ys, eps=1.0, lr=0.01),
    (float("nan"), 0),
)
