"""Fine-tuning: LoRA adapters on a trained model."""
