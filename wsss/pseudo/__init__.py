"""Stage 3, ``wsss make-pseudo``: pseudo masks from CAMs (threshold, dense CRF, IR labels, random walk)."""
