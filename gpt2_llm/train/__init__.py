"""Training: TrainingConfig and the presets, the loop, optimizers, torchrun, metrics, resumable checkpoints."""
