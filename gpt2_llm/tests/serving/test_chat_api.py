"""`POST /v1/chat/completions` end to end with the official `openai` client: a chat-tuned model's server (its own
live server, below) and the base model's (conftest's "main", which answers through the plain template)."""
import subprocess
import sys

import pytest

from gpt2_llm.chat.session import ChatSession
from gpt2_llm.chat.template import check_messages
from gpt2_llm.infer.sampling import SamplingSettings
from gpt2_llm.tests.helpers import MAIN, ONE_THREAD_ENV, LiveServer

openai = pytest.importorskip("openai", reason="the API tests drive the server with the official openai client")
httpx = pytest.importorskip("httpx")

HISTORY = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who's there?"},
           {"role": "assistant", "content": "Nay, answer me."}, {"role": "user", "content": "Long live the king!"}]


@pytest.fixture(scope="module")
def chat_server(chat_files):
    pytest.importorskip("fastapi", reason="serve needs FastAPI and uvicorn: pip install -r requirements-serve.txt")
    _, _, checkpoint, vocab_file = chat_files
    server = LiveServer(checkpoint, vocab_file, "--max-batch", 4).wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(chat_server):
    return openai.OpenAI(base_url=chat_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat(client, messages=HISTORY, **options):
    return client.chat.completions.create(model="chat", messages=messages, **{"max_tokens": 12, **options})


def test_greedy_chat_equals_predict_chat_with_the_same_history(client, chat_files):
    model, bpe, checkpoint, vocab_file = chat_files
    answer = chat(client, temperature=0)
    session = ChatSession(model, bpe, SamplingSettings(max_tokens=12, temperature=0), system="Be brief.")
    session.turns = check_messages(HISTORY)[1:3]  # the user's first message and the assistant's answer
    assert answer.choices[0].message.content == "".join(session.reply("Long live the king!"))
    assert answer.choices[0].message.role == "assistant" and answer.object == "chat.completion"
    assert answer.choices[0].finish_reason in ("stop", "length")
    predicted = subprocess.run([sys.executable, MAIN, "predict", "Who's there?", "12", str(checkpoint),
                                str(vocab_file), "--chat", "--temperature", "0", "--system", "Be brief."],
                               input="", capture_output=True, text=True, timeout=120, env=ONE_THREAD_ENV)
    first = chat(client, messages=HISTORY[:2], temperature=0).choices[0].message.content
    assert predicted.returncode == 0 and predicted.stdout == first + "\n", predicted.stderr


def test_streamed_deltas_make_the_whole_message(client):
    whole = chat(client, temperature=0).choices[0].message.content
    chunks = list(chat(client, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].usage.completion_tokens >= 1


def test_n_seeded_choices_and_usage(client):
    answer = chat(client, n=3, seed=7, temperature=1.0)
    again = chat(client, n=3, seed=7, temperature=1.0)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert [c.message.content for c in answer.choices] == [c.message.content for c in again.choices]
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_logprobs_list_each_token_with_its_alternatives(client):
    answer = chat(client, temperature=0, logprobs=True, top_logprobs=3)
    content = answer.choices[0].logprobs.content
    spelled = b"".join(bytes(t.bytes) for t in content)  # (a token may be part of a character: its bytes say it)
    assert spelled.decode("utf-8", errors="replace") == answer.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 3 and token.logprob == pytest.approx(token.top_logprobs[0].logprob)


def test_a_stop_string_ends_the_reply_before_it(client):
    whole = chat(client, temperature=0, max_tokens=20).choices[0].message.content
    if len(whole) < 3:
        pytest.skip("the reply is too short to cut")
    stop = whole[2:4]
    cut = chat(client, temperature=0, max_tokens=20, stop=[stop]).choices[0]
    assert cut.message.content == whole[: whole.index(stop)] and cut.finish_reason == "stop"


@pytest.mark.parametrize("messages, field", [
    ([{"role": "assistant", "content": "Hi"}], "no user message"),
    ([{"role": "wizard", "content": "Hi"}], "messages[0].role must be one of"),
    ([{"role": "user", "content": ["not", "a", "string"]}], "messages[0].content must be a string"),
    ([], "non-empty list"),
])
def test_bad_messages_are_400s_naming_the_field(chat_server, messages, field):
    response = httpx.post(chat_server.url + "/v1/chat/completions", json={"messages": messages})
    assert response.status_code == 400
    error = response.json()["error"]
    assert field in error["message"] and error["param"] == "messages"


def test_a_model_never_chat_tuned_answers_through_the_plain_template_and_says_so(live_servers):
    server = live_servers["main"]
    response = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                          json={"messages": [{"role": "user", "content": "Who's there?"}], "max_tokens": 8,
                                "temperature": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["chat_template"] == "plain" and "\n\nUser:" not in body["choices"][0]["message"]["content"]
