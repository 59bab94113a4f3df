"""The lab's experiments, one module each, in the lab's order (3.1 Q1 ... 3.3 Q2)."""

EXPERIMENTS = ["ae", "sae", "conv", "cnn", "attention", "vit"]
TITLES = {  # also shown for an experiment that has no results yet
    "ae": "3.1 Q1 — Autoencoder reconstruction",
    "sae": "3.1 Q2 — Stacked autoencoder classifier",
    "conv": "3.2 Q1 — Convolution arithmetic",
    "cnn": "3.2 Q2 — CNN exploration",
    "attention": "3.3 Q1 — Self-attention",
    "vit": "3.3 Q2 — Vision Transformer",
}
