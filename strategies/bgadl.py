"""BGADL: Bayesian generative active deep learning (Tran et al., ICML 2019).

The acquisition is BALD (Houlsby et al. 2011) over T MC-dropout samples, as in
the paper. What sets BGADL apart happens around it, in its round hook
(autoal.hooks.synthesis): once the oracle has labeled the batch, a VAE-ACGAN
generates synthetic samples x' = g(e(x*), y*) conditioned on each queried
sample x* and its label y*; they join the task model's training set with
label y*, and never the ledger of the oracle's labels.
"""
from __future__ import annotations

from .base import register
from .uncertainty import Bald


@register
class BGADL(Bald):
    """BALD picks; the hook augments the training set with `samples` generated samples per
    queried one, from a VAE-ACGAN trained `epochs` epochs over the labeled set each round."""

    name = "bgadl"

    def __init__(self, samples: int = 1, epochs: int = 100):
        if samples < 1 or epochs < 1:
            raise ValueError("bgadl needs samples >= 1 and epochs >= 1")
        self.samples, self.epochs = samples, epochs
