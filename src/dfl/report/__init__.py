"""The report: saved experiment results -> report.md and one self-contained report.html (`build`),
with the lab-number table beside ours. It never trains: it reads each experiment's
result.json, so `dfl report RUN_DIR` redraws a reproduction without running it. Imports the
experiments (their typed results and documents) and the layers below them."""
