"""Recursion-aware pipeline planning: a per-layer cost model, an event simulator of megatron-core's 1F1B
schedules and a planner that picks the `pipeline_model_parallel_layout` (and a recompute setting per stage).

Everything here except `calibrate` is plain arithmetic (no torch), so `vffn-plan` runs anywhere.
"""
