"""The run's configuration: composing Hydra's tree (`paths`, `overrides`), moving renamed keys (`moves`),
validating it into typed dataclasses (`run`; each group's dataclass lives beside the code it configures, `system`
here), and the one error type that names the key at fault (`errors`). Importing it is cheap: no torch, no
megatron."""
