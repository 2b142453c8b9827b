"""Training: one loop (accelerate), three-stage SFT, DPO, and iterative self-reflection."""
