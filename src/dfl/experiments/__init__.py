"""The lab's experiments, one module each, in the lab's order (3.1 Q1 ... 3.3 Q2).

The names alone live here, so the command line can list them without loading torch; each
module's `EXPERIMENT` is the experiment itself, and `dfl.experiments.registry` has them all.
"""

EXPERIMENTS = ["ae", "sae", "conv", "cnn", "attention", "vit"]
