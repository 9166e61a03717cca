"""From files to a model, one way: a gpt2-llm checkpoint or a Hugging Face GPT-2 directory -> (model, metadata).

    read_model_files   path -> (tensors, metadata): a checkpoint file, or a directory read by huggingface.py
    model_from_tensors a model of the class asked for (GPT2), shaped by the metadata's config, holding the tensors
    load_model         both

The class comes from the caller, so this module needs only the network's config, never the class that
imports it (gpt2_llm.GPT2 opens its from_checkpoint door here).

GPT2.from_checkpoint / from_pretrained, the trainer, the commands and check_checkpoint all load here.
"""
import os

from gpt2_llm.checkpoints import checkpoint, huggingface


def load_model(source, model_class) -> tuple:
    """A checkpoint file or a Hugging Face GPT-2 directory -> (model, metadata).

    The metadata of a directory holds just its config; a checkpoint's holds whatever its writer saved
    (the trainer: "vocab", "training", ...).
    """
    tensors, metadata = read_model_files(source)
    return model_from_tensors(model_class, tensors, metadata, source), metadata


def read_model_files(source) -> tuple[dict, dict]:
    """(tensors under our state_dict keys, metadata) of a checkpoint file or a Hugging Face directory."""
    if os.path.isdir(source):
        config, tensors = huggingface.read_hf_gpt2(source)
        return tensors, {"config": config.to_dict()}
    return checkpoint.load_checkpoint(source)


def model_from_tensors(model_class, tensors: dict, metadata: dict, source):
    """A model_class the metadata["config"] describes, holding tensors; source names the file in messages."""
    model = model_class.from_config(checkpoint.config_from_metadata(metadata, source))
    checkpoint.copy_model_tensors(model, tensors, metadata, source)
    return model
