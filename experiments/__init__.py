"""Research scripts run from the repository root, e.g. `python -m experiments.sweep`."""
