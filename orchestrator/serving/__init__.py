"""Thin adapters to what serves a plan: NVML inventory, MIG/MPS binding, repository rendering, tritonserver, model control, metrics, the fronts, Ray."""
