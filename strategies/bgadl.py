"""BGADL: Bayesian generative active deep learning (Tran et al., ICML 2019).

The acquisition is BALD (Houlsby et al. 2011) over T MC-dropout samples, as in
the paper. What sets BGADL apart happens around it, in its round hook
(autoal.generative): once the oracle has labeled the batch, a VAE-ACGAN
generates synthetic samples x' = g(e(x*), y*) conditioned on each queried
sample x* and its label y*; they join the task model's training set with
label y*, and never the ledger of the oracle's labels.
"""
from __future__ import annotations

from .base import register
from .uncertainty import Bald


@register
class BGADL(Bald):
    """BALD picks; the hook augments the training set with generated samples."""

    name = "bgadl"
