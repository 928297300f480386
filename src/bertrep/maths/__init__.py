"""Pure numerics on arrays, no I/O and no other part of the project: linear CKA (biased,
debiased, streaming; numpy or torch), the transfer metrics (normalized score, AuFC,
Mean-CKA), forgetting, sentence-bootstrap intervals and permutation floors, rogue
dimensions and LogME. Definitions: docs/definitions.md."""
