"""Compatibility name for `vffn_pretrain.data.tokenizing.writer`: the library owns it, and data_tools builds on the library, never
the reverse. This is the same module object, so what is read or patched here is that module's."""

import sys

import vffn_pretrain.data.tokenizing.writer as _moved

sys.modules[__name__] = _moved
