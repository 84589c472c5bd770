"""Config keys that moved to another group. The old spelling keeps working, with a one-line warning naming
the new key; setting both to different values is an error naming both.

conf/ keeps each old key, set to null, so that Hydra accepts it on the command line without a `+`. An old key
at the new key's default value moves silently: configs saved before the move (in checkpoints) hold every key.
"""

from __future__ import annotations

import dataclasses
import logging

from vffn_pretrain.config.errors import ConfigError

log = logging.getLogger(__name__)

# old "group.key" -> new "group.key"
MOVED_KEYS = {
    "train.backend": "system.backend",
    "train.precision": "system.precision",
    "train.recompute_granularity": "system.recompute_granularity",
    "train.recompute_method": "system.recompute_method",
    "train.recompute_num_layers": "system.recompute_num_layers",
}


def apply_moved_keys(raw: dict, defaults: dict[str, object]) -> None:
    """Move the old keys of `raw` (the resolved config, changed in place) to their new places. `defaults`:
    the new group's dataclass, by group name (e.g. {"system": SystemConfig}), for the new keys' defaults."""
    for old, new in MOVED_KEYS.items():
        old_group, old_key = old.split(".")
        new_group, new_key = new.split(".")
        section = raw.get(old_group)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        if value is None:  # unset (conf/ keeps the old key as null)
            continue
        target = raw.get(new_group)
        if target is None:
            target = raw[new_group] = {}
        if not isinstance(target, dict):
            raise ConfigError(new_group, f"must be a mapping, got {type(target).__name__}")
        default = _default(defaults[new_group], new_key)
        current = target.get(new_key, default)
        if current != default and current != value:
            raise ConfigError(old, f"{old}={value!r} conflicts with {new}={current!r}; set only {new}")
        if value != default:
            log.warning("%s is deprecated: use %s (took %s=%r)", old, new, new, value)
        target[new_key] = value


def _default(cls, name: str):
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default
