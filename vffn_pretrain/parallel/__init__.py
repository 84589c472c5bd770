"""Distributed plumbing: process groups, megatron-core parallel state, seeding, and the CPU shims."""
