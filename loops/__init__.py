"""The generative loop engine: loop families, generative models, pools with provenance."""
