"""JigsawServe orchestrator: app specs, profiles, planning, placement (no Triton imports here)."""
