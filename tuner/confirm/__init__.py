"""Stage 5 of a search: its leaders against the seed's config, same seeds, a paired verdict."""
