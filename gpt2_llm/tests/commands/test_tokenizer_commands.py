"""commands/tokenizer_commands.py: `decode`'s JSON id lists, checked before any id reaches the tokenizer."""
import json

import pytest

from gpt2_llm.commands.tokenizer_commands import parse_ids_json
from gpt2_llm.errors import UserError


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2", "not valid JSON"),
        ('{"a": 1}', "list of integers"),
        ('["1"]', "list of integers"),
        ("[1.0]", "list of integers"),
        ("[true]", "list of integers"),
        ("[-1]", "out of range"),
        ("[5, 100]", "out of range"),
    ],
)
def test_parse_ids_json_errors(text, message):
    with pytest.raises(UserError, match=message):
        parse_ids_json(text, 100)


def test_parse_ids_json_ok():
    ids = [15496, 995, 0, 50256]
    assert parse_ids_json(json.dumps(ids), 50257) == ids
    assert parse_ids_json("[]", 10) == []
