"""The network, and nothing else: config, embedding, attention, blocks, KV cache, the fused head + loss.

The ground floor of the package: these modules import only torch, the standard library, each other and
gpt2_llm.errors. Files, Hugging Face layouts, generation and fast inference live above (gpt2_llm/gpt2.py).
"""
