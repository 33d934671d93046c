"""Stage 4 of a search: the files a finished search leaves in results/."""
