"""Stage 2 of a search: where the trials run, and what a time budget lets them train."""
