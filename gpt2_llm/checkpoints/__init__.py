"""Model files: our safetensors checkpoints, Hugging Face GPT-2 directories, and the one loader for both."""
