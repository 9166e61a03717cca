"""The tokenizer's parts around bpe.py (the readable tokenizer at the repository's root): learning the merges
(training.py), the compiled kernels (kernels.py, training_kernels.py), when they load and how they compile
(compiled.py, warm_up.py), the parallel file encoder (parallel.py), OpenAI's files (openai_files.py), and learning or
loading a vocab file for a corpus (vocab.py)."""
