"""Custom kernels the models can use in place of XLA ops, each with an XLA fallback."""
