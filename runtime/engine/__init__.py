"""The engine: `FewShotSegmenter` (segmenter) and what it is made of: support sets (support_set), results,
`RuntimeOptions` (options), the backend contract and provider registry (backend), the manifest, image pre/post-
processing (image), shape profiles, errors, atomic files, versions, progress bars. Imports no other room."""
