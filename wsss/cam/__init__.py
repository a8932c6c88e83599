"""Stage 2, ``wsss extract-cam`` / ``wsss eval-cam``: class activation maps and their quality."""
