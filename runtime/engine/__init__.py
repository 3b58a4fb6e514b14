"""The engine: the segmenter and what it is made of (manifest, images, support sets, results, errors)."""
