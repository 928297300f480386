"""bertrep: BERT representations in fine-tuning, transfer and forgetting."""

__version__ = "0.1.0"
