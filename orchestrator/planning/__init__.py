"""Plans: candidates, the MILP and its rounding, placement, the exact checker, capacity, cluster plans. Imports no Triton module."""
