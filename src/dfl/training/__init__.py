"""One training run: the loop (`trainer`), what it writes and reads back (`run_dir`,
`checkpoint`), the device-side step (`device_step`) and a finished run's model
(`trained`).

Built on the typed config, the models, the objectives, the data and the runtime; sweeps,
experiments, the Python API and the commands build on it."""
