"""Tests for gpt2_llm/tokenizer/openai_files.py: OpenAI's files that do not make one vocab are refused, saying why.
(That GPT-2's files encode exactly like tiktoken is test_bpe's.)"""
import json

import pytest

from bpe import EOT, BPE
from gpt2_llm.errors import UserError
from gpt2_llm.tests.tokenizer_fixtures import ENCODER_JSON, VOCAB_BPE
from gpt2_llm.tokenizer.openai_files import _gpt2_bytes_to_unicode


def test_from_gpt2_bad_files(tmp_path):
    bad_json = tmp_path / "encoder.json"
    bad_json.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        BPE.from_gpt2(str(bad_json), VOCAB_BPE)
    with pytest.raises(UserError, match="no such file"):
        BPE.from_gpt2(str(tmp_path / "missing.json"), VOCAB_BPE)
    merges = tmp_path / "vocab.bpe"
    with open(VOCAB_BPE, encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges.write_text("\n".join([lines[0], lines[2], lines[1]] + lines[3:]), encoding="utf-8")  # two ranks swapped
    with pytest.raises(UserError, match="does not match"):
        BPE.from_gpt2(ENCODER_JSON, str(merges))
    # A merge of a token that is made only by a later merge: no BPE learns that, and the fast merge loop assumes not.
    spelled = _gpt2_bytes_to_unicode()
    encoder = {spelled[b]: b for b in range(256)} | {"abc": 256, "bc": 257, EOT: 258}
    bad_json.write_text(json.dumps(encoder), encoding="utf-8")
    merges.write_text("#version: 0.2\na bc\nb c\n", encoding="utf-8")
    with pytest.raises(UserError, match="merge 0 .* merged only after it"):
        BPE.from_gpt2(str(bad_json), str(merges))
