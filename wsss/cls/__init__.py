"""Stage 1, ``wsss train-cls``: multi-label classifiers whose class maps become CAMs."""
