"""Training: the Trainer, its torchrun process group, the auto race of candidates and the verdict on a result."""
