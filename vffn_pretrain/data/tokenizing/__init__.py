"""Documents to a megatron-core indexed dataset (what ``vffn-data tokenize`` runs, and what tokenizes the
bundled corpus for training): ``readers`` (input files to chunks of records), ``worker`` (a chunk to token ids),
``writer`` (atomic ``.bin`` / ``.idx`` writing), ``pipeline`` (``run_tokenize``, the whole run)."""
