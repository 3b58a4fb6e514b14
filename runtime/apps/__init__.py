"""Applications over the engine: label collections, serve over HTTP (and their Ray twins), drawing results."""
