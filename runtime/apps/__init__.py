"""Applications over the engine: `fssam2 label` (label; on Ray Data, label_ray), `fssam2 serve` (serve; on Ray Serve,
serve_ray), the content-addressed set store (store), limits on untrusted images (guard) and drawing results (render).
Their command-line arguments are in runtime/cli/."""
