"""vffn-pretrain: megatron-core pretraining with VersatileFFN layers."""

from vffn_pretrain.parallel import megatron_startup as _megatron_startup
from vffn_pretrain.process import lifetime as _lifetime

if _lifetime.is_multiprocessing_child():  # e.g. megatron-core's checkpoint writer's manager process
    _lifetime.exit_with_parent()
else:
    _lifetime.watch_parent_from_env()  # e.g. a trainer started by `vffn-study run`
_lifetime.watch_forked_children()  # e.g. megatron-core's per-bucket file writers, forked by the trainer
_megatron_startup.install()  # before anything imports megatron-core: what it loads but rarely uses, loads later
