"""Safety: labels and metrics, baselines, heads, notebook 06's evaluation, and the ``python -m so8t_core.safety``
command line."""
