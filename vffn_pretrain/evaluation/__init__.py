"""Zero-shot evaluation with lm-evaluation-harness (`vffn-eval`) and the offline task shipped with the package."""
