import pytest

from gpt2_llm.infer.text_stream import TextStream

# A toy vocabulary: "é" is two bytes, split over two tokens, as byte-level BPE may do.
TOKENS = {0: b"h", 1: b"\xc3", 2: b"\xa9", 3: b"llo", 4: b" E", 5: b"ND", 6: b"!", 7: b"\n",
          8: b"\xf0\x9f", 9: b"\x98\x80"}  # 8 + 9: a four-byte emoji


def run(ids, stop=()):
    stream = TextStream(TOKENS, stop)
    pieces = [stream.push(i) for i in ids]
    return pieces, stream.finish(), stream.stopped


def test_a_character_split_over_tokens_waits_until_complete():
    pieces, rest, _ = run([0, 1, 2, 3])
    assert pieces == ["h", "", "é", "llo"]  # never a U+FFFD for the first half
    assert "".join(pieces) + rest == "héllo"


def test_four_byte_character():
    pieces, rest, _ = run([8, 9, 6])
    assert pieces == ["", "😀", "!"] and rest == ""


def test_an_unfinished_character_at_the_end_becomes_a_replacement():
    pieces, rest, _ = run([0, 1])
    assert "".join(pieces) + rest == "h\ufffd"


def test_stop_string_over_two_tokens_is_never_printed():
    pieces, rest, stopped = run([0, 4, 5, 6], stop=["END"])
    assert pieces == ["h", " ", "", ""] and rest == "" and stopped  # "E" was held: it might start "END"


def test_held_text_is_released_when_it_turns_out_not_to_be_a_stop():
    pieces, rest, stopped = run([0, 4, 6, 7], stop=["END"])
    assert not stopped
    assert pieces == ["h", " ", "E!", "\n"] and rest == ""


def test_earliest_of_several_stop_strings_wins():
    pieces, rest, stopped = run([3, 6, 7], stop=["\n", "o!"])
    assert "".join(pieces) + rest == "ll" and stopped


def test_nothing_after_a_stop():
    stream = TextStream(TOKENS, ["!"])
    assert stream.push(3) == "llo"
    assert stream.push(6) == "" and stream.stopped
    assert stream.push(0) == "" and stream.finish() == ""


@pytest.mark.parametrize("ids", [[0, 1, 2, 3, 4, 5], [8, 9, 8, 9], [4, 4, 5, 5]])
def test_without_stops_the_pieces_join_to_the_full_decode(ids):
    pieces, rest, _ = run(ids)
    assert "".join(pieces) + rest == b"".join(TOKENS[i] for i in ids).decode("utf-8")
