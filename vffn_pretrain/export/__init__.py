"""Hugging Face export (`vffn-export`): weight mapping (weights.py), the self-contained model of the non-dense
kinds (modeling_vffn.py, copied into every export) and the command line (cli.py)."""
