"""chat/session.py and `predict --chat`: a conversation's prompts, greedy replies equal to generate() on the
template's ids, the history cut to the context, /reset, and the plain template for a model never chat-tuned."""
import subprocess
import sys

import pytest
import torch

from bpe import BPE
from gpt2_llm.chat.session import ChatSession
from gpt2_llm.chat.template import Message, render
from gpt2_llm.infer.sampling import SamplingSettings
from gpt2_llm.tests.helpers import MAIN, ONE_THREAD_ENV, wide_logits_model

GREEDY = SamplingSettings(max_tokens=12, temperature=0)


def expected_reply(model, bpe, messages) -> str:
    """Greedy generate() on the template's prompt, cut at <|end|> or any special token."""
    ids, _ = render(messages, bpe, add_generation_prompt=True)
    out = model.generate(torch.tensor([ids]), GREEDY.max_tokens, temperature=0, vocab_size=bpe.vocab_size)
    reply = []
    for token in out[0, len(ids):].tolist():
        if token in bpe.special_tokens.values():
            break
        reply.append(token)
    return bpe.decode(reply)


def test_greedy_replies_are_generate_on_the_conversation_so_far(chat_files):
    model, bpe, _, _ = chat_files
    session = ChatSession(model, bpe, GREEDY, system="Be brief.")
    first = "".join(session.reply("Who's there?"))
    assert first == expected_reply(model, bpe, [Message("system", "Be brief."), Message("user", "Who's there?")])
    second = "".join(session.reply("Stand and unfold yourself."))
    history = [Message("system", "Be brief."), Message("user", "Who's there?"), Message("assistant", first),
               Message("user", "Stand and unfold yourself.")]
    assert second == expected_reply(model, bpe, history)
    session.reset()
    assert "".join(session.reply("Who's there?")) == first


def test_the_history_is_cut_from_its_oldest_turns_to_fit_the_context(chat_files):
    model, bpe, _, _ = chat_files
    session = ChatSession(model, bpe, GREEDY, system="Be brief.")
    for i in range(30):
        session.turns += [Message("user", f"Line {i} of a long scene"), Message("assistant", "Aye.")]
    ids = session.prompt_ids(session.turns + [Message("user", "The newest")])
    assert len(ids) + GREEDY.max_tokens <= model.config.max_seq_len
    text = bpe.decode(ids)
    assert text.startswith("<|system|>Be brief.<|end|><|user|>") and text.endswith("The newest<|end|><|assistant|>")
    assert "Line 0 " not in text


def test_a_model_never_chat_tuned_gets_the_plain_template(vocab):
    bpe = BPE(str(vocab))
    bpe.load()
    model = wide_logits_model(vocab_size=bpe.get_model_vocab_size(), max_seq_len=128).eval()
    session = ChatSession(model, bpe, GREEDY)
    reply = "".join(session.reply("Who's there?"))
    assert "\n\nUser:" not in reply
    assert bpe.decode(session.prompt_ids(session.turns + [Message("user", "Next")])).startswith("User: Who's there?")


def test_predict_chat_reads_messages_and_replies_as_the_session_does(chat_files):
    model, bpe, checkpoint, vocab_file = chat_files
    result = subprocess.run([sys.executable, MAIN, "predict", "Who's there?", "12", str(checkpoint), str(vocab_file),
                             "--chat", "--temperature", "0", "--system", "Be brief."],
                            input="Stand and unfold yourself.\n/reset\nWho's there?\n", capture_output=True, text=True,
                            timeout=120, env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stderr
    session = ChatSession(model, bpe, GREEDY, system="Be brief.")
    first = "".join(session.reply("Who's there?"))
    second = "".join(session.reply("Stand and unfold yourself."))
    assert result.stdout == f"{first}\n{second}\n{first}\n"
    assert "forgotten" in result.stderr


@pytest.mark.parametrize("flags, message", [(["--beam", "2"], "drop --beam"), (["--system", "x", "--temperature", "0"],
                                                                                  "--system goes with --chat")])
def test_chat_flag_mistakes(chat_files, flags, message):
    _, _, checkpoint, vocab_file = chat_files
    chat = ["--chat"] if "--beam" in flags else []
    result = subprocess.run([sys.executable, MAIN, "predict", "", "5", str(checkpoint), str(vocab_file), *chat, *flags],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_an_exported_chat_model_reads_back_with_its_tokens_and_chats_the_same(chat_files, tmp_path):
    from gpt2_llm.checkpoints.export import export

    model, bpe, checkpoint, vocab_file = chat_files
    export(model, bpe, tmp_path / "hf", "hf", "f32")
    again = BPE.from_gpt2(str(tmp_path / "hf" / "vocab.json"), str(tmp_path / "hf" / "merges.txt"))
    assert again.special_tokens == bpe.special_tokens and again.merges() == bpe.merges()
    runs = [subprocess.run([sys.executable, MAIN, "predict", "Who's there?", "12", *source, "--chat", "--temperature",
                            "0"], input="", capture_output=True, text=True, timeout=120, env=ONE_THREAD_ENV)
            for source in ([str(checkpoint), str(vocab_file)], ["--pretrained", str(tmp_path / "hf")])]
    assert runs[0].returncode == runs[1].returncode == 0, runs[0].stderr + runs[1].stderr
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.strip()
