"""`python main.py serve` end to end: live servers on 127.0.0.1 (conftest.live_servers), driven by the official
`openai` client and by raw HTTP for what a well-behaved client never sends."""
import json
import subprocess
import sys
import threading
import time

import pytest

from gpt2_llm.tests.helpers import MAIN, ONE_THREAD_ENV, free_port

openai = pytest.importorskip("openai", reason="the API tests drive the server with the official openai client")
httpx = pytest.importorskip("httpx")

MODEL = "served"  # the checkpoint's file name without its suffix (conftest.serve_files)
PROMPTS = ["ROMEO:", "JULIET: O", "First Citizen:", "All:", "Speak, speak.", "What say you?", "KING", "the"]


@pytest.fixture(scope="module")
def server(live_servers):
    return live_servers["main"]


@pytest.fixture(scope="module")
def tight(live_servers):
    return live_servers["tight"]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def complete(client, prompt, max_tokens=24, **options):
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, **options)


def stream_text(client, prompt, max_tokens=24) -> str:
    chunks = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True)
    return "".join(chunk.choices[0].text for chunk in chunks)


def test_lists_its_model_and_answers_health(client, server):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert server.health()["status"] == "ok"


def test_greedy_text_equals_predict_at_temperature_0(client, serve_files):
    model, vocab = serve_files
    result = complete(client, "ROMEO:", max_tokens=30)
    predicted = subprocess.run([sys.executable, MAIN, "predict", "ROMEO:", "30", model, vocab, "--temperature", "0"],
                               capture_output=True, text=True, timeout=120, env=ONE_THREAD_ENV)  # as the server
    assert predicted.returncode == 0, predicted.stderr
    assert "ROMEO:" + result.choices[0].text + "\n" == predicted.stdout
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 30 and result.usage.total_tokens == result.usage.prompt_tokens + 30


def test_streamed_text_equals_the_whole_response_and_ends_with_done(client, server):
    assert stream_text(client, "KING") == complete(client, "KING").choices[0].text
    body = {"model": MODEL, "prompt": "KING", "max_tokens": 5, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][len("data: "):])["usage"]["completion_tokens"] == 5


def test_logprobs_report_the_chosen_token_and_its_alternatives(client):
    result = complete(client, "First Citizen:", max_tokens=8, logprobs=3)
    logprobs = result.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 8
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert 1 <= len(top) <= 3 and logprob <= 0
        assert top[token] == pytest.approx(max(top.values()))  # greedy: the chosen token is the most likely
    assert logprobs.text_offset == sorted(logprobs.text_offset)


def test_echo_with_logprobs_scores_the_prompt(client):
    result = complete(client, "All: speak", max_tokens=3, echo=True, logprobs=1)
    choice = result.choices[0]
    assert choice.text.startswith("All: speak")
    assert len(choice.logprobs.tokens) == result.usage.prompt_tokens + 3
    assert choice.logprobs.token_logprobs[0] is None and all(lp < 0 for lp in choice.logprobs.token_logprobs[1:])


def test_stop_string_ends_the_text_before_it(client):
    text = complete(client, "Speak, speak.", max_tokens=40).choices[0].text
    stop = text[8:11]
    result = complete(client, "Speak, speak.", max_tokens=40, stop=[stop, "never-there"])
    assert result.choices[0].text == text[: text.index(stop)]
    assert result.choices[0].finish_reason == "stop"


def test_n_choices_per_prompt_with_a_seed_are_reproducible(client):
    def sample():
        return client.completions.create(model=MODEL, prompt=["All:", "KING"], n=3, max_tokens=12, temperature=1.0,
                                         seed=7, extra_body={"top_k": 20, "repetition_penalty": 1.2})

    first, again = sample(), sample()
    assert [c.index for c in first.choices] == list(range(6))
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first.choices[:3]}) > 1  # the choices of one prompt draw differently
    assert first.usage.completion_tokens == 6 * 12


@pytest.mark.parametrize("extreme", [{"temperature": 1e-300}, {"temperature": 1.0, "repetition_penalty": 1e-300}])
def test_an_extreme_request_never_ends_its_neighbours(client, server, extreme):
    # Settings that once made sampling NaN (and the engine end every running sequence): neighbours decoding beside
    # it finish every token, equal to their solo output, and the extreme request itself completes.
    prompts = PROMPTS[:3]
    solo = [stream_text(client, prompt, max_tokens=30) for prompt in prompts]
    together, extreme_result = [None] * len(prompts), []

    def run(index):
        together[index] = stream_text(client, prompts[index], max_tokens=30)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    time.sleep(0.05)  # they are decoding when it arrives
    temperature = extreme.pop("temperature")
    extreme_result.append(client.completions.create(model=MODEL, prompt="KING", max_tokens=20, temperature=temperature,
                                                    extra_body=extreme))
    for thread in threads:
        thread.join()
    assert together == solo
    choice = extreme_result[0].choices[0]
    assert choice.finish_reason in ("stop", "length") and extreme_result[0].usage.completion_tokens >= 1
    if temperature < 1e-100:  # too small to divide by: greedy
        assert choice.text == complete(client, "KING", max_tokens=20).choices[0].text
    assert server.health()["status"] == "ok"


def test_eight_concurrent_greedy_streams_each_equal_their_solo_output(client, server):
    solo = [stream_text(client, prompt, max_tokens=40) for prompt in PROMPTS]
    together, peak = [None] * len(PROMPTS), []

    def run(index):
        time.sleep(0.01 * index)  # staggered: later requests join a batch that is already decoding
        together[index] = stream_text(client, PROMPTS[index], max_tokens=40)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        peak.append(server.health()["running"])
        time.sleep(0.005)
    for thread in threads:
        thread.join()
    assert together == solo
    assert max(peak) > 1  # they did decode in one batch


BAD_REQUESTS = [  # (body: raw bytes or JSON-able, status, param or code in the error)
    (b"{not json", 400, None),
    (b"[" * 100_000, 400, None),
    ([1, 2], 400, None),
    ({"prompt": 123}, 400, "prompt"),
    ({"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 5000}, 400, "max_tokens"),
    ({"prompt": "Speak, speak. " * 4, "max_tokens": 2040}, 400, "context_length_exceeded"),  # prompt + max_tokens
    ({"prompt": [1] * 2100, "max_tokens": 1}, 400, "context_length_exceeded"),  # the prompt alone is too long
    ({"prompt": [10**6]}, 400, "prompt"),
    ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"prompt": "x", "temperature": True}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "n": 99}, 400, "n"),
    ({"prompt": ["a", "b"], "n": 16}, 400, "n"),  # 32 sequences: more than 8 slots + a queue of 16
    ({"prompt": "x", "logprobs": 99}, 400, "logprobs"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"prompt": "x", "stream": "yes"}, 400, "stream"),
    ({"prompt": "x", "presence_penalty": 1.0}, 400, "presence_penalty"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model_not_found"),
    ({"prompt": "x", "model": "../served.pt"}, 404, "model_not_found"),  # a name, never a path to load
    ({"prompt": "x" * (2 << 20)}, 413, None),
    (b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", 400, None),  # past Python's integer-digit limit
    (b'{"prompt": "x", "seed": ' + b"1" * 5000 + b"}", 400, None),
]


@pytest.mark.parametrize("body, status, where", BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_bad_requests_get_their_status_and_an_openai_error(server, body, status, where):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(server.url + "/v1/completions", content=content, timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if where is not None:
        assert where in (error["param"], error["code"])
    assert server.health()["status"] == "ok"  # and the server keeps answering


def test_unknown_route_is_a_404_in_the_same_shape(server):
    response = httpx.get(server.url + "/v1/nothing-here")
    assert response.status_code == 404 and "message" in response.json()["error"]


def test_the_key_is_required_on_the_api_but_not_on_the_page(tight):
    url, body = tight.url + "/v1/completions", {"prompt": "x", "max_tokens": 1}
    assert httpx.post(url, json=body).status_code == 401
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer sesame"}).status_code == 200
    assert httpx.get(tight.url + "/").status_code == 200 and httpx.get(tight.url + "/health").status_code == 200


@pytest.mark.parametrize("header", ["bearer sesame", "BEARER sesame", "Bearer  sesame"])
def test_the_bearer_scheme_is_case_insensitive(tight, header):
    response = httpx.get(tight.url + "/v1/models", headers={"Authorization": header})
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/", "/health", "/v1/models", f"/v1/models/{MODEL}"])
def test_head_answers_wherever_get_does(server, path):
    assert httpx.head(server.url + path).status_code == 200 == httpx.get(server.url + path).status_code


def test_one_model_by_its_id(client, server):
    assert client.models.retrieve(MODEL).id == MODEL
    missing = httpx.get(server.url + "/v1/models/gpt-4")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_declared_json_is_415_and_starts_nothing(server, content_type):
    # A web page's cross-origin "simple" POST (text/plain) must not start a generation on a local server.
    finished = server.health()["finished"]
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(server.url + "/v1/completions", content=b'{"prompt": "x", "max_tokens": 1}', headers=headers)
    assert response.status_code == 415 and response.json()["error"]["message"]
    assert server.health()["finished"] == finished


def test_a_trailing_slash_is_a_404_never_a_redirect_built_from_the_host_header(server):
    response = httpx.post(server.url + "/v1/completions/", json={"prompt": "x"},
                          headers={"Host": f"localhost:{server.port}"})
    assert response.status_code == 404 and "location" not in response.headers


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""])
def test_on_loopback_a_host_that_is_not_this_machine_gets_421(server, host):
    # DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1 still sends Host: evil.example.
    response = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1},
                          headers={"Host": host})
    assert response.status_code == 421 and response.json()["error"]["message"]
    for name in ("localhost", "127.0.0.1", "LOCALHOST"):
        assert httpx.get(server.url + "/health", headers={"Host": f"{name}:{server.port}"}).status_code == 200


def test_a_reverse_proxys_name_may_be_allowed(serve_files):
    from gpt2_llm.tests.helpers import LiveServer

    model, vocab = serve_files
    server = LiveServer(model, vocab, "--allowed-host", "proxy.example").wait_ready()
    try:
        assert httpx.get(server.url + "/health", headers={"Host": "proxy.example"}).status_code == 200
        assert httpx.get(server.url + "/health", headers={"Host": "other.example"}).status_code == 421
    finally:
        server.stop()


def test_max_tokens_0_with_echo_scores_the_prompt(client):
    # What evaluation harnesses (lm-eval's local-completions) send for log-likelihoods: the prompt's scores, no text.
    prompt = "ROMEO: Speak, speak."
    scored = client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=1, temperature=0)
    one_more = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, echo=True, logprobs=1,
                                         temperature=0)
    choice, logprobs = scored.choices[0], scored.choices[0].logprobs
    assert choice.text == prompt and choice.finish_reason == "length" and scored.usage.completion_tokens == 0
    assert "".join(logprobs.tokens) == prompt and logprobs.token_logprobs[0] is None
    assert logprobs.token_logprobs == one_more.choices[0].logprobs.token_logprobs[: len(logprobs.tokens)]


def test_an_empty_prompt_echoes_as_sent(client):
    result = client.completions.create(model=MODEL, prompt="", max_tokens=3, temperature=0, echo=True)
    plain = client.completions.create(model=MODEL, prompt="", max_tokens=3, temperature=0)
    assert result.choices[0].text == plain.choices[0].text  # nothing before it: not "<|endoftext|>"


def test_a_client_that_hangs_up_mid_body_costs_one_quiet_log_line(server):
    import socket

    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 100\r\n\r\n{\"prompt\": ")
        time.sleep(0.3)
    wait_for(lambda: server.health()["status"] == "ok")
    time.sleep(0.3)
    log = server.output()
    assert "Traceback" not in log and "Exception in ASGI application" not in log


def long_stream(tight):
    """A streaming request that would run for seconds (2000 tokens), opened -> (client, response, its lines), which
    the caller holds: a line iterator that is garbage-collected closes the response, as a leaving client does."""
    http = httpx.Client(base_url=tight.url, headers={"Authorization": "Bearer sesame"}, timeout=30)
    request = http.build_request("POST", "/v1/completions",
                                 json={"prompt": "x", "max_tokens": 2000, "stream": True, "temperature": 0})
    response = http.send(request, stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()
    assert next(lines).startswith("data: ")  # decoding: it holds the one slot
    return http, response, lines


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_client_that_disconnects_mid_stream_frees_its_slot(tight):
    cancelled = tight.health()["cancelled"]
    http, response, _ = long_stream(tight)
    response.close()
    http.close()
    wait_for(lambda: tight.health()["running"] == 0)
    assert tight.health()["cancelled"] == cancelled + 1  # freed because the client left, not because it finished
    ok = httpx.post(tight.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2},
                    headers={"Authorization": "Bearer sesame"}, timeout=30)
    assert ok.status_code == 200


def test_a_queued_stream_whose_client_leaves_frees_its_place(tight):
    running = long_stream(tight)  # the one slot, still decoding throughout
    cancelled = tight.health()["cancelled"]
    http, response = long_stream_waiting(tight)  # nothing sent to it yet
    response.close()
    http.close()
    try:
        wait_for(lambda: tight.health()["waiting"] == 0)
        assert tight.health()["running"] == 1 and tight.health()["cancelled"] == cancelled + 1
    finally:
        running[1].close()
        running[0].close()
    wait_for(lambda: tight.health()["running"] == 0)


def test_a_full_queue_answers_429(tight):
    running = long_stream(tight)  # the one slot
    waiting = long_stream_waiting(tight)  # the one place in the queue
    try:
        refused = openai.OpenAI(base_url=tight.url + "/v1", api_key="sesame", max_retries=0)
        with pytest.raises(openai.RateLimitError) as error:
            refused.completions.create(model=MODEL, prompt="x", max_tokens=1)
        assert error.value.status_code == 429 and "busy" in error.value.message
        assert error.value.response.headers["retry-after"] == "1"  # when a client may try again
    finally:
        for http, response, *_ in (running, waiting):
            response.close()
            http.close()
    wait_for(lambda: tight.health()["running"] + tight.health()["waiting"] == 0)


def long_stream_waiting(tight):
    """A streaming request queued behind the running one: accepted (200) once it is in the queue."""
    http = httpx.Client(base_url=tight.url, headers={"Authorization": "Bearer sesame"}, timeout=30)
    request = http.build_request("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 5, "stream": True})
    response = http.send(request, stream=True)
    assert response.status_code == 200 and tight.health()["waiting"] == 1, tight.health()
    return http, response


def test_listening_beyond_this_machine_without_a_key_is_warned_about():
    from gpt2_llm.commands.serve_command import exposure_warning

    assert "without --api-key" in exposure_warning("0.0.0.0", None)
    assert exposure_warning("0.0.0.0", "key") is None and exposure_warning("127.0.0.1", None) is None


@pytest.mark.parametrize("args, message", [
    (["missing.pt", "--port", free_port()], "model file missing.pt not found"),
    (["--port", "70000"], "--port must be between 1 and 65535"),
    (["--port", "http"], "--port must be an integer"),
    (["--max-batch", "0"], "--max-batch must be between 1 and 256"),
    (["--max-queue", "-1"], "--max-queue must be between 0"),
    (["--dtype", "fp8"], "--dtype fp8: use fp32 or bf16"),
    (["--max-header-bytes", "100"], "--max-header-bytes must be >= 1024"),
    (["--header-timeout", "0"], "--header-timeout must be > 0"),
    (["--body-timeout", "inf"], "--body-timeout must be a finite number"),
    (["--max-connections", "0"], "--max-connections must be >= 1"),
])
def test_cli_mistakes_are_one_line_errors_with_exit_code_2(tmp_path, args, message):
    result = subprocess.run([sys.executable, MAIN, "serve", *map(str, args)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and message in result.stderr


def test_the_api_key_may_come_from_the_environment(serve_files):
    from gpt2_llm.tests.helpers import LiveServer

    model, vocab = serve_files
    server = LiveServer(model, vocab, env={**ONE_THREAD_ENV, "GPT2_LLM_API_KEY": "from-env"})
    try:
        server.wait_ready()
        assert httpx.get(server.url + "/v1/models").status_code == 401
        assert httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer from-env"}).status_code == 200
    finally:
        server.stop()

