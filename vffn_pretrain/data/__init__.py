"""The dataset layer the trainer uses: config, tokenizers, megatron-core datasets and the resumable loader.

Modules (imported explicitly; this package imports nothing heavy on its own so that tokenize workers stay
light): ``config`` (DataConfig), ``tokenizer`` (build_tokenizer), ``indexed`` (verified opening of .bin/.idx),
``checks`` (start-up checks), ``builder`` (build_datasets), ``loader`` (build_dataloader).
"""
