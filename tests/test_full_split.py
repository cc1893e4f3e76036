"""Clean accuracy over a whole split: counts, cache reuse and invalidation, randomized defenses."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pssr.data import Split
from pssr.experiments.full_split import clean_accuracy


class Fixed(nn.Module):
    """Predicts class ``c`` for every image (a linear layer only so the weights have a fingerprint)."""

    def __init__(self, c: int, k: int = 3) -> None:
        super().__init__()
        self.lin = nn.Linear(1, k)
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.bias.copy_(torch.nn.functional.one_hot(torch.tensor(c), k).float())

    def forward(self, x):
        return self.lin(x.new_zeros(x.shape[0], 1))


class Noisy(nn.Module):
    """A randomized "defense": random logits from the global RNG, which the per-batch reseed fixes."""

    def forward(self, x):
        return torch.randn(x.shape[0], 3)


def _split(n: int = 23) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % 3)


def test_counts_every_example_and_reuses_the_cache(tmp_path):
    split = _split()
    models = {"zero": Fixed(0), "two": Fixed(2)}
    cache = tmp_path / "clean.json"
    acc = clean_accuracy(models, split, batch_size=5, cache=cache)
    assert acc["zero"]["n"] == 23 and acc["zero"]["correct"] == 8 and acc["two"]["correct"] == 7
    assert acc["zero"]["accuracy"] == pytest.approx(8 / 23)
    assert set(json.loads(cache.read_text())["models"]) == {"zero", "two"}

    def boom(x):
        raise AssertionError("a saved result should be reused")

    models["zero"].forward = boom
    models["two"].forward = boom
    again = clean_accuracy(models, split, batch_size=5, cache=cache)
    assert again == acc


def test_changed_weights_or_data_are_computed_again_and_compute_false_leaves_pending(tmp_path):
    split, cache = _split(), tmp_path / "clean.json"
    clean_accuracy({"m": Fixed(0)}, split, cache=cache)
    assert clean_accuracy({"m": Fixed(1)}, split, cache=cache, compute=False)["m"] == {
        "pending": True,
        "fingerprint": clean_accuracy({"m": Fixed(1)}, split, compute=False)["m"]["fingerprint"],
    }
    assert (
        clean_accuracy({"m": Fixed(1)}, split, cache=cache)["m"]["correct"] == 8
    )  # class 1: indices 1, 4, ..., 22
    other = Split(split.x, (split.y + 1) % 3)  # other labels: the cache is not for this split
    assert clean_accuracy({"m": Fixed(1)}, other, cache=cache, compute=False)["m"].get("pending")
    # compute= a collection: only those models are computed
    both = clean_accuracy({"m": Fixed(1), "n": Fixed(2)}, other, cache=cache, compute={"n"})
    assert both["m"].get("pending") and both["n"]["correct"] == 8


def test_randomized_models_are_reseeded_per_batch_whatever_the_global_stream():
    split = _split(600)
    torch.manual_seed(1)
    a = clean_accuracy({"r": Noisy()}, split, batch_size=50)["r"]["correct"]
    torch.manual_seed(2)
    b = clean_accuracy({"r": Noisy()}, split, batch_size=50)["r"]["correct"]
    assert a == b and 120 < a < 280  # random guesses of 3 classes, the same draws both times


def test_bad_arguments_are_named(tmp_path):
    split = _split()
    with pytest.raises(ValueError, match="non-empty dict"):
        clean_accuracy({}, split)
    with pytest.raises(ValueError, match="Split"):
        clean_accuracy({"m": Fixed(0)}, (split.x, split.y))
    with pytest.raises(ValueError, match="batch_size"):
        clean_accuracy({"m": Fixed(0)}, split, batch_size=0)
    with pytest.raises(ValueError, match="unknown"):
        clean_accuracy({"m": Fixed(0)}, split, compute={"x"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert (
        clean_accuracy({"m": Fixed(0)}, split, cache=bad)["m"]["correct"] == 8
    )  # unreadable cache: computed again
    assert json.loads(bad.read_text())["models"]["m"]["correct"] == 8
