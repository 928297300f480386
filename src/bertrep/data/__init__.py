"""Task data: the task specs and loaders (local GLUE/CoNLL files or the hub), tokenization
and batches, probe sets, the Parquet activation tables, and what identifies a run's
inputs (data and model digests)."""
