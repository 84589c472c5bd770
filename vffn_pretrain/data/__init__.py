"""The dataset layer the trainer uses: config, tokenizers, megatron-core datasets and the resumable loader.

Modules (imported explicitly; this package imports nothing heavy on its own so that tokenize workers stay
light): ``config`` (DataConfig), ``tokenizer`` (build_tokenizer), ``indexed`` (verified opening of .bin/.idx),
``checks`` (start-up checks), ``builder`` (build_datasets), ``loader`` (build_dataloader); ``prefix`` (the file
names of a dataset prefix), ``report`` (a dataset's JSON report), ``bundled`` (the corpus and tokenizer shipped in
``assets/``), ``tokenizing`` (documents to an indexed dataset). The ``vffn-data`` tool is built on
these; nothing here imports it.
"""
