"""Every lab experiment by name, in the lab's order."""

from __future__ import annotations

from dfl.experiments import EXPERIMENTS, ae, attention, cnn, conv, sae, vit
from dfl.experiments.experiment import Experiment

REGISTRY: dict[str, Experiment] = {
    e.name: e
    for e in (
        ae.EXPERIMENT,
        sae.EXPERIMENT,
        conv.EXPERIMENT,
        cnn.EXPERIMENT,
        attention.EXPERIMENT,
        vit.EXPERIMENT,
    )
}
assert list(REGISTRY) == EXPERIMENTS, "dfl.experiments.EXPERIMENTS lists them in this order"


def get(name: str) -> Experiment:
    return REGISTRY[name]
