"""The sweep machinery behind parallel_runner.py: sweep files (config), task expansion (tasks),
the ledger, scheduling on GPU/CPU/SLURM slots, tallies, plots and mail."""
