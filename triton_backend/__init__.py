"""The jigsaw Triton backend: entry, stage (request-level scheduler) and variant-runner models."""
