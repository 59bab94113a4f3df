"""One training run: `fit` and the `Run` it returns (`run`), the loop (`trainer`), its best
epoch and early stopping (`best`), what it writes and reads back (`run_dir`, `checkpoint`),
the device-side step (`device_step`) and a finished run's model (`trained`).

Built on the typed config, the models, the objectives, the data and the runtime; sweeps,
experiments, the Python API and the commands build on it."""
