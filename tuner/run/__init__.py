"""Stage 3 of a search: the trials, with Ray Tune, and what watches them."""
