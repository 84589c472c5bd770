"""Scaling-law tooling: read a sweep's run summaries, fit L(C), L(N) and L(N, D) per FFN variant,
compare variants at equal compute and equal parameters, plot; and plan sweeps (``ladder``)."""
