"""`vffn-data`: the command-line tool that makes and examines indexed datasets (`cli`, `merge`, `inspection`,
`train_tokenizer`, `corpus`). It is built on the library (`vffn_pretrain.data`), which never imports it."""
