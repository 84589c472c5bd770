"""`vffn-data`: the command-line tool that makes and examines indexed datasets (cli, merge, inspection,
train_tokenizer). It is built on the library (`vffn_pretrain.data`), which never imports it; the modules the
library took over (prefix, report, bundled, readers, worker, writer, pipeline) keep their names here."""
