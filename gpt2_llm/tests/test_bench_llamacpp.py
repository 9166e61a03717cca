"""bench/llamacpp.py's pure helpers: where the cache lives, the export's config fix, reading llama-bench's JSON,
and the decode rate; none of them needs llama.cpp."""
import json
import sys
from pathlib import Path

import pytest

from gpt2_llm.tests.helpers import REPO

sys.path.insert(0, str(REPO))

from bench import llamacpp  # noqa: E402


@pytest.mark.parametrize("environ, expected", [
    ({}, Path("~/.cache/gpt2-llm/llama.cpp").expanduser()),
    ({"GPT2_LLM_LLAMA_DIR": "/somewhere/llama"}, Path("/somewhere/llama")),
    ({"GPT2_LLM_LLAMA_DIR": ""}, Path("~/.cache/gpt2-llm/llama.cpp").expanduser()),
])
def test_llama_dir_comes_from_the_environment_else_the_user_cache(environ, expected):
    assert llamacpp.default_llama_dir(environ) == expected


def test_cache_layout_is_the_sdist_source_beside_its_build():
    root = Path("/cache")
    assert llamacpp.llama_source(root) == root / f"llama_cpp_python-{llamacpp.LLAMA_CPP_PYTHON}/vendor/llama.cpp"
    assert llamacpp.llama_bench_binary(root) == root / "build/bin/llama-bench"


def test_the_exported_config_has_the_n_ctx_key_llama_cpps_converter_reads(tmp_path):
    from gpt2_llm.tests.helpers import make_small_model

    make_small_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["n_ctx"] == config["n_positions"]


def test_llama_bench_json_gives_the_generation_tests_samples():
    output = json.dumps([
        {"n_prompt": 512, "n_gen": 0, "samples_ts": [900.0], "avg_ts": 900.0, "stddev_ts": 0.0},
        {"n_prompt": 0, "n_gen": 128, "samples_ts": [50.5, 49.5, 50.0], "avg_ts": 50.0, "stddev_ts": 0.5,
         "cpu_info": "AMD EPYC", "build_commit": "abc123", "build_number": 7, "n_threads": 2},
    ])
    result = llamacpp.llama_bench_result(output)
    assert result["samples"] == [50.5, 49.5, 50.0]
    assert (result["avg"], result["stddev"], result["threads"]) == (50.0, 0.5, 2)
    assert result["cpu"] == "AMD EPYC" and result["build"] == "abc123 (7)"


def test_decode_rate_leaves_out_the_prefill_and_first_token():
    # 128 tokens in 1.32 s, of which the prompt and the first token took 0.05 s: 127 decodes in 1.27 s
    assert llamacpp.decode_rate(0.05, 1.32, 128) == pytest.approx(100.0)


def test_median_and_spread():
    assert llamacpp.median_and_spread([3.0, 1.0, 2.0]) == "2.0 (1.0-3.0)"


def test_model_tag_names_random_weights_and_tells_pretrained_directories_apart(tmp_path):
    assert llamacpp.model_tag(None) == "gpt2-small-seed0"
    first, second = tmp_path / "a" / "gpt2", tmp_path / "b" / "gpt2"
    for directory in (first, second):
        directory.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(b"")
    tags = {llamacpp.model_tag(str(first)), llamacpp.model_tag(str(second))}
    assert len(tags) == 2 and all(tag.startswith("gpt2-") for tag in tags)
