"""The one error type for bad configuration: it always names the offending key."""


class ConfigError(ValueError):
    """A config value is wrong. `key` is the dotted Hydra key (e.g. `parallel.tp`)."""

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"config key `{key}`: {reason}")
