"""Using a trained model: sampling, generation, beam search, streaming text, scoring a text, and the weight
formats (fp32, bf16, int8) that make decoding fast."""
