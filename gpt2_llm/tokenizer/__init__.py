"""The tokenizer's machinery around bpe.py (the readable tokenizer at the repository's root): the compiled
kernels, and learning or loading a vocab file for a corpus."""
