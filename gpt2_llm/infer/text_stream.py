"""Token ids -> text that is safe to print now, for streaming output.

Printing decode([id]) for each new token goes wrong in two ways, and TextStream handles both:
  split characters  byte-level BPE may cut a character: "é" can arrive as two one-byte tokens, and
                    either alone decodes to U+FFFD. Bytes wait in an incremental UTF-8 decoder
                    until their character is complete.
  stop strings      a stop string can arrive in pieces over several tokens. Text that could be the
                    start of one is held back until it is known not to be, so a stop string is
                    never printed, not even in part.

    stream = TextStream(bpe.token_bytes(), stop=["\\n\\n"])
    for token_id in ...:
        print(stream.push(token_id), end="", flush=True)
        if stream.stopped: break
    print(stream.finish())
"""
import codecs
from collections.abc import Mapping, Sequence


class TextStream:
    def __init__(self, token_bytes: Mapping[int, bytes], stop: Sequence[str] = ()):
        self.token_bytes = token_bytes
        self.stop = [s for s in stop if s]
        self.stopped = False  # True once a stop string appeared; nothing more is released
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # decoded text not yet released: a possible start of a stop string

    def push(self, token_id: int) -> str:
        """Add one token -> the text that can be shown now, often '' while something is held."""
        if self.stopped:
            return ""
        self._held += self._utf8.decode(self.token_bytes[token_id])
        return self._release(final=False)

    def finish(self) -> str:
        """End of the stream -> everything still held (an unfinished character becomes U+FFFD)."""
        if self.stopped:
            return ""
        self._held += self._utf8.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        found = [i for i in (self._held.find(s) for s in self.stop) if i >= 0]
        if found:
            text, self._held, self.stopped = self._held[: min(found)], "", True
            return text
        keep = 0 if final else _longest_suffix_starting(self._held, self.stop)
        text, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        return text


def _longest_suffix_starting(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of text that is the start of a stop string.

    _longest_suffix_starting("say END", ["ENDING"]) -> 3;  _longest_suffix_starting("abc", ["x"]) -> 0
    """
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
