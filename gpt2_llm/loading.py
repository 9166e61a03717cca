"""From files to a model, one way: a gpt2-llm checkpoint or a Hugging Face GPT-2 directory -> (GPT2, metadata).

    read_model_files   path -> (tensors, metadata): a checkpoint file, or a directory read by hf_interop
    model_from_tensors the model the metadata's config describes, with those tensors copied in
    load_model         both

GPT2.from_checkpoint / from_pretrained, the trainer, the commands and check_checkpoint all load here.
"""
import os

from gpt2_llm import checkpoint, hf_interop
from gpt2_llm.gpt2 import GPT2


def load_model(source) -> tuple[GPT2, dict]:
    """A checkpoint file or a Hugging Face GPT-2 directory -> (model, metadata).

    The metadata of a directory holds just its config; a checkpoint's holds whatever its writer saved
    (the trainer: "vocab", "training", ...).
    """
    tensors, metadata = read_model_files(source)
    return model_from_tensors(tensors, metadata, source), metadata


def read_model_files(source) -> tuple[dict, dict]:
    """(tensors under our state_dict keys, metadata) of a checkpoint file or a Hugging Face directory."""
    if os.path.isdir(source):
        config, tensors = hf_interop.read_hf_gpt2(source)
        return tensors, {"config": config.to_dict()}
    return checkpoint.load_checkpoint(source)


def model_from_tensors(tensors: dict, metadata: dict, source) -> GPT2:
    """The model metadata["config"] describes, holding tensors; source names the file in messages."""
    model = GPT2.from_config(checkpoint.config_from_metadata(metadata, source))
    checkpoint.copy_model_tensors(model, tensors, metadata, source)
    return model
