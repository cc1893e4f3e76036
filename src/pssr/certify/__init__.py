"""Certified L2 robustness by randomized smoothing, with PSSR's regenerator as an optional denoiser.

* :mod:`pssr.certify.core`: PREDICT and CERTIFY of Cohen, Rosenfeld and Kolter (ICML 2019) around any
  ``nn.Module`` (:class:`SmoothedClassifier`).
* :mod:`pssr.certify.denoised`: denoised smoothing (Salman et al., NeurIPS 2020) with a PSSR purifier
  as the denoiser (:class:`DenoisedClassifier`); train one with :func:`pssr.train.denoise.train_denoiser`.
* :mod:`pssr.certify.run`: a dataset's certification: several models and sigmas, per-example
  records, resume, torchrun sharding (:func:`certify_models`).
* :mod:`pssr.certify.report`: report.json, report.md and the certified-accuracy-vs-radius plot.

    from pssr.certify import SmoothedClassifier, certify_models
    g = SmoothedClassifier(classifier, sigma=0.5)
    cert = g.certify(x, n0=100, n=10_000, alpha=0.001, generator=g.generator(0))
    report = certify_models({"bare": classifier}, data.test, sigmas=[0.25, 0.5], out="runs/cert")
"""

from __future__ import annotations

from pssr.certify.core import (
    ABSTAIN,
    Certificate,
    SmoothedClassifier,
    certified_accuracy,
    lower_confidence_bound,
)
from pssr.certify.denoised import DenoisedClassifier
from pssr.certify.loading import certify_checkpoints, load_base_model
from pssr.certify.run import certify_models

__all__ = [
    "ABSTAIN",
    "Certificate",
    "DenoisedClassifier",
    "SmoothedClassifier",
    "certified_accuracy",
    "certify_checkpoints",
    "certify_models",
    "load_base_model",
    "lower_confidence_bound",
]
