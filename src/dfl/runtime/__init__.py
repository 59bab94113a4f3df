"""How a dfl process runs on its machine, below everything that trains: the CPU tuning a run
enters once (flush-to-zero, the allocator, the cores shared with other trainings), Ctrl-C and
SIGTERM handling, atomic files, run-directory locks and local worker processes.

Imports nothing of dfl but `dfl.errors`; everything else may import it."""
