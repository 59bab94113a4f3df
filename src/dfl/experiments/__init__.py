"""The lab's experiments, one module each, in the lab's order (3.1 Q1 ... 3.3 Q2)."""

EXPERIMENTS = ["ae", "sae", "conv", "cnn", "attention", "vit"]
