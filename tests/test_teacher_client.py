"""The teacher client, cache, output file and cost estimate against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time

import pytest

from openai_server import serve
from teacher_helpers import read_output_lines, write_tiny_csqa
from tinythinker.errors import TinyThinkerError
from tinythinker.data.sources import load_questions
from tinythinker.data.teacher.cache import (
    ResponseCache,
    ResponsesFile,
    encode_response,
    output_line,
    output_line_text,
    request_hash,
)
from tinythinker.data.teacher.client import Endpoint, Limits, TeacherClient, TeacherServerError, parse_duration, retry_after_seconds
from tinythinker.data.teacher.cost import TokenCounter, estimate_tokens, load_prices, price_for, reservation_tokens
from tinythinker.data.teacher.requests import build_request, exemplars, instruction, render_exemplar

FAST = dict(backoff_base=0.01, backoff_max=0.05, max_retries=8)  # rpm / tpm: the server's headers (the default)


@pytest.fixture(scope="module")
def requests_csqa(tmp_path_factory):
    raw = write_tiny_csqa(tmp_path_factory.mktemp("raw") / "csqa")
    questions = load_questions("csqa", raw).splits["train"]
    return [build_request(q, dataset="csqa", model="gpt-4o-2024-05-13") for q in questions]


def answer_all(base_url, requests, *, key="sk-test", check=True, seen=None, **limits):
    """Run the client over ``requests``; returns ({custom_id: Reply}, {custom_id: RequestFailed}, Stats).
    ``seen``: a dict that gets the client's ``limits`` text at the end and its ``warnings`` as they come."""
    replies, failures = {}, {}
    seen = {} if seen is None else seen
    seen["warnings"] = []

    async def main():
        async with TeacherClient(Endpoint(base_url, key), Limits(**{**FAST, **limits}), on_warning=seen["warnings"].append) as client:
            if check:
                await client.check(requests[0]["body"]["model"])
            await client.run(requests, lambda r, reply: replies.__setitem__(r["custom_id"], reply),
                             lambda r, failure: failures.__setitem__(r["custom_id"], failure))
            seen["limits"] = client.limits_in_force()
            return client.stats

    stats = asyncio.run(main())
    return replies, failures, stats


# --- token counts and prices ---------------------------------------------------------------------

# o200k_base token counts of real prompt text, measured with bpe-openai 0.1.4 (the tokenizer gpt-4o uses).
O200K_COUNTS = [
    (instruction(), 141),
    (render_exemplar(exemplars("csqa")[0]), 191),
    (render_exemplar(exemplars("obqa")[3]), 202),
    (render_exemplar(exemplars("strategyqa")[5]), 90),
    ("The sanctions against the school were a punishing blow, and they seemed to what the efforts the school had made "
     "to change?\nOptions: A. ignore, B. enforce, C. authoritarian, D. yell at, E. avoid\nKey Information:\n"
     "Explanations: A is correct. Because\nB is incorrect. Because", 66),
    ("Photosynthesis converts light energy into chemical energy stored in glucose; chlorophyll absorbs mostly blue and red wavelengths.", 21),
    ("In 1969, Apollo 11 landed on the Moon: Neil Armstrong's first steps were watched by ~600 million people.", 26),
]


def test_token_estimate_is_close_to_the_real_tokenizer():
    for text, real in O200K_COUNTS:
        assert abs(estimate_tokens(text) - real) <= max(2, 0.1 * real), text[:40]
    total_real = sum(real for _, real in O200K_COUNTS)
    total_estimate = sum(estimate_tokens(text) for text, _ in O200K_COUNTS)
    assert abs(total_estimate - total_real) / total_real < 0.03


def test_chat_overhead_is_counted_per_message():
    counter = TokenCounter("some-local-llama")  # no tokenizer known: the estimate
    assert not counter.exact and counter.method.startswith("estimate")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    contents = sum(counter.count(m["role"]) + counter.count(m["content"]) for m in messages)
    assert counter.count_messages(messages) == contents + 2 * 3 + 3


def test_price_table_lookup_and_user_file(tmp_path):
    assert price_for("gpt-4o-2024-05-13").input == 5.0
    assert price_for("gpt-4o-mini-2024-07-18").model == "gpt-4o-mini"  # dash-prefix match, longest wins
    assert price_for("my-llama") is None
    assert price_for("gpt-4o-2024-05-13").cost(1_000_000, 1_000_000) == pytest.approx(20.0)
    assert price_for("gpt-4o-2024-05-13").cost(1_000_000, 0, batch=True) == pytest.approx(2.5)

    prices = tmp_path / "prices.yaml"
    prices.write_text("my-llama: {input: 0, output: 0.5}\ngpt-4o: {input: 1, output: 2}\n")
    table = load_prices(prices)
    assert price_for("my-llama", table).output == 0.5
    assert price_for("gpt-4o", table).input == 1.0  # the user's file wins
    assert price_for("gpt-4o-2024-05-13", table).input == 5.0  # built-ins stay

    for text, fragment in [("- a\n- b\n", "mapping"), ("m: {input: 1}\n", "needs exactly"),
                           ("m: {input: -1, output: 1}\n", "non-negative"), ("m: [unclosed\n", "not valid YAML")]:
        prices.write_text(text)
        with pytest.raises(TinyThinkerError, match=fragment) as error:
            load_prices(prices)
        assert str(prices) in str(error.value)
    with pytest.raises(TinyThinkerError, match="cannot read"):
        load_prices(tmp_path / "missing.yaml")


def test_retry_after_header_forms():
    assert retry_after_seconds({"retry-after-ms": "250"}) == pytest.approx(0.25)
    assert retry_after_seconds({"Retry-After": "3"}) == 3.0
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after_seconds({"Retry-After": when}) <= 31
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({}) is None


# --- the client against the server ---------------------------------------------------------------

def test_answers_every_request_through_429_500_drops_garbage_and_latency(requests_csqa):
    with serve(latency=0.02, rate_limit_every=5, retry_after=0.05, fail_every=7, drop_every=6, malformed_every=11) as server:
        replies, failures, stats = answer_all(server.base_url, requests_csqa, concurrency=8)
        received = server.stats
    assert not failures
    assert set(replies) == {r["custom_id"] for r in requests_csqa}
    for request in requests_csqa:
        body = replies[request["custom_id"]].response["body"]
        assert len(body["choices"]) == request["body"]["n"] == 8
        assert body["usage"]["prompt_tokens"] > 0
    faults = received.statuses[429] + received.statuses[500] + received.dropped + received.malformed
    assert faults > 0 and stats.retried == faults
    assert received.posts == len(requests_csqa) + faults
    assert set(stats.retry_reasons) == {"429", "500", "connection", "bad_reply"}
    assert set(received.answered) == {request_hash(r) for r in requests_csqa}  # the server sees our cache keys
    assert received.max_in_flight <= 8


def test_retry_after_is_honoured(requests_csqa):
    with serve(rate_limit_first=1, retry_after=0.5) as server:
        replies, failures, _ = answer_all(server.base_url, requests_csqa[:1], concurrency=1)
        times = list(server.stats.post_times)
    assert not failures and len(replies) == 1
    assert len(times) == 2 and times[1] - times[0] >= 0.5  # the backoff alone would be ~0.01 s


@pytest.mark.parametrize("listed, alone", [("gpt-4o-2024-05-13", False), ("some-other-model", True)])
def test_first_request_goes_alone_unless_the_model_is_listed(requests_csqa, listed, alone):
    with serve(latency=0.5, models=listed) as server:
        answer_all(server.base_url, requests_csqa[:4], concurrency=4)
        first, second = sorted(server.stats.post_times)[:2]
    assert (second - first >= 0.5) == alone


def test_rpm_budget_spaces_requests(requests_csqa):
    with serve() as server:
        answer_all(server.base_url, requests_csqa[:13], concurrency=16, rpm=600)  # 10 per second
        times = sorted(server.stats.post_times)
    assert len(times) == 13
    assert times[-1] - times[0] >= 12 / 10 * 0.9


# --- rate limits from the server's x-ratelimit headers --------------------------------------------

def test_reset_header_forms():
    assert parse_duration("1s") == 1.0 and parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("6m0s") == 360.0 and parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("0.5") == 0.5 and parse_duration("1.5µs") == pytest.approx(1.5e-6)
    for nonsense in ("soon", "", "-1s", "nan", "inf", "1x", "ms", "5 minutes"):
        assert parse_duration(nonsense) is None, nonsense


def test_paces_to_the_servers_limit_headers(requests_csqa):
    # the server allows 5 requests, refilling 5 per second, and says so in its headers; /models does not
    # name the model, so the first request goes alone and its reply tells the client the limits
    with serve(limit_requests=5, limit_window=1.0, models="", usage="chars") as server:
        seen = {}
        replies, failures, _ = answer_all(server.base_url, requests_csqa[:15], concurrency=15, seen=seen)
        times = sorted(server.stats.post_times)
        statuses = dict(server.stats.statuses)
    assert not failures and len(replies) == 15
    assert statuses == {200: 15}  # paced below the server's bucket: not one 429
    # 5 at once, then 10 at no more than 5 per second: at least 2 s (without pacing: all 15 at once)
    assert times[-1] - times[0] >= 1.6
    assert sum(t - times[0] < 0.5 for t in times) <= 9  # the bucket (5) plus half a second of refill (2.5), and one spare
    assert seen["limits"] == "limits: 5 rpm (server headers) / no tpm limit; concurrency 15" and not seen["warnings"]


def test_token_limit_headers_pace_by_tokens(requests_csqa):
    requests = requests_csqa[:6]
    per_request = max(reservation_tokens(r["body"]) for r in requests)  # what the server charges, about 3,900
    limit = int(2.5 * per_request)  # two requests at once, then two and a half per second
    with serve(limit_tokens=limit, limit_window=1.0, models="", usage="chars") as server:
        seen = {}
        replies, failures, _ = answer_all(server.base_url, requests, concurrency=6, seen=seen)
        times = sorted(server.stats.post_times)
        limited = server.stats.limited
    assert not failures and len(replies) == 6 and limited == 0
    assert times[-1] - times[0] >= 1.2  # 4 requests after the first 2 at 2.5 per second; without pacing: all at once
    assert seen["limits"] == f"limits: no rpm limit / {limit:,} tpm (server headers); concurrency 6"


def test_no_limit_headers_means_only_the_concurrency_bound(requests_csqa):
    # vLLM, Ollama, llama.cpp: no x-ratelimit headers. The old default (500 rpm, ramping up from an
    # empty bucket) let about 8 requests a second go; now all 30 are in flight together.
    with serve(latency=0.5, usage="chars") as server:
        seen = {}
        replies, failures, _ = answer_all(server.base_url, requests_csqa, concurrency=len(requests_csqa), seen=seen)
        in_flight = server.stats.max_in_flight
    assert not failures and len(replies) == len(requests_csqa) == 30
    assert in_flight >= 15  # at 500 rpm with 0.5 s latency: about 4
    assert seen["limits"] == "limits: none (server sends no limit headers; concurrency 30)"


def test_a_nonsense_limit_header_is_ignored_with_one_warning(requests_csqa):
    bad = "x-ratelimit-limit-requests=plenty,x-ratelimit-reset-tokens=soon"
    with serve(limit_requests=1000, limit_tokens=10_000_000, headers=bad, usage="chars") as server:
        seen = {}
        replies, failures, _ = answer_all(server.base_url, requests_csqa[:10], concurrency=4, seen=seen)
        assert server.stats.posts == 10 and not failures
    assert len(seen["warnings"]) == 2  # one per bad header, not one per reply
    assert "x-ratelimit-limit-requests header: 'plenty' is not a positive number of requests" in seen["warnings"][0]
    assert "x-ratelimit-reset-tokens header: 'soon' is not a duration" in seen["warnings"][1]
    # the requests limit is ignored; the tokens limit is still read (its reset falls back to a per-minute refill)
    assert seen["limits"] == "limits: no rpm limit / 10,000,000 tpm (server headers); concurrency 4"


def test_explicit_rpm_wins_over_the_headers(requests_csqa):
    # the headers say 2 requests per second; an explicit rpm of 6,000 (100 per second) replaces them
    with serve(latency=0.5, limit_requests=2, limit_window=1.0, enforce_limits=False, usage="chars") as server:
        seen = {}
        replies, failures, _ = answer_all(server.base_url, requests_csqa[:12], concurrency=12, rpm=6000, seen=seen)
        in_flight = server.stats.max_in_flight
    assert not failures and len(replies) == 12
    assert in_flight >= 8  # paced by the headers: about 2 or 3
    assert seen["limits"] == "limits: 6,000 rpm (--rpm) / no tpm limit; concurrency 12"


def test_a_429_pauses_every_worker_without_limit_headers(requests_csqa):
    with serve(rate_limit_first=1, retry_after=0.5, models="", usage="chars") as server:  # the first request goes alone: a 429
        replies, failures, _ = answer_all(server.base_url, requests_csqa[:6], concurrency=6)
        times = sorted(server.stats.post_times)
    assert not failures and len(replies) == 6
    assert all(t - times[0] >= 0.5 for t in times[1:])  # everything after the 429 waited for its Retry-After


@pytest.mark.parametrize("behaviour, posts_per_request", [({"ignore_n": True}, 8), ({"max_choices": 3}, 6)])
def test_fewer_samples_than_asked_are_completed_with_n1_requests(requests_csqa, behaviour, posts_per_request):
    requests = requests_csqa[:3]
    with serve(**behaviour) as server:
        replies, failures, stats = answer_all(server.base_url, requests, concurrency=4)
        posts = server.stats.posts
    assert not failures
    assert posts == posts_per_request * len(requests)
    assert stats.n_completions == (posts_per_request - 1) * len(requests)
    for reply in replies.values():
        body = reply.response["body"]
        assert [c["index"] for c in body["choices"]] == list(range(8))
        assert len({c["message"]["content"] for c in body["choices"]}) > 1  # real samples, not one copied
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        assert reply.http_requests == posts_per_request


def test_truncated_samples_are_kept_as_answered(requests_csqa):
    with serve(truncate_every=3) as server:
        replies, failures, _ = answer_all(server.base_url, requests_csqa[:4], concurrency=4)
        assert server.stats.posts == 4  # a cut-off sample is the next round's business, not a retry
    reasons = [c["finish_reason"] for r in replies.values() for c in r.response["body"]["choices"]]
    assert reasons.count("length") == 32 // 3 and not failures


def test_bad_key_is_one_clear_error_without_retries(requests_csqa):
    secret = "sk-wrong-0123456789abcdef"
    with serve(api_key="sk-right") as server:
        with pytest.raises(TeacherServerError) as error:
            answer_all(server.base_url, requests_csqa, key=secret)
        assert server.stats.posts == 0  # the check before the run caught it
        message = str(error.value)
        assert "refused the API key (HTTP 401" in message and "$OPENAI_API_KEY" in message and secret not in message

        with pytest.raises(TeacherServerError, match="refused the API key"):
            answer_all(server.base_url, requests_csqa, key=secret, check=False)
        assert server.stats.posts == 1  # no retry storm: the first 401 stops the run

        with pytest.raises(TeacherServerError, match=r"set \$OPENAI_API_KEY"):
            answer_all(server.base_url, requests_csqa, key=None)


def test_an_empty_account_is_one_clear_error_not_endless_waiting(requests_csqa):
    with serve(no_quota=True, models="") as server:  # /models does not vouch for the model: one request goes first
        with pytest.raises(TeacherServerError, match="no quota left"):
            answer_all(server.base_url, requests_csqa)
        assert server.stats.posts == 1
    with serve(no_quota=True) as server:  # it does: a first wave, but nothing is retried
        with pytest.raises(TeacherServerError, match="no quota left"):
            answer_all(server.base_url, requests_csqa, concurrency=8)
        assert server.stats.posts <= 8 and max(server.stats.received.values()) == 1


def test_unreachable_base_url_is_one_clear_error(requests_csqa):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(TeacherServerError, match=f"cannot reach the teacher at http://127.0.0.1:{port}/v1"):
        answer_all(f"http://127.0.0.1:{port}/v1", requests_csqa)
    assert time.monotonic() - started < 10


def test_a_server_gone_mid_run_stops_the_run(requests_csqa):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(TeacherServerError, match="connections in a row failed"):  # not max_retries x every request
        answer_all(f"http://127.0.0.1:{port}/v1", requests_csqa, check=False, concurrency=4, max_retries=1000)
    assert time.monotonic() - started < 10


def test_wrong_path_or_model_stops_the_run(requests_csqa):
    with serve() as server:
        with pytest.raises(TeacherServerError, match="answered 404"):
            answer_all(server.base_url.replace("/v1", "/v2"), requests_csqa, concurrency=4)
        assert server.stats.posts == 0


def test_a_200_carrying_an_error_shows_the_servers_message_and_retries_only_what_may_pass(requests_csqa):
    with serve(error_200="model_not_supported") as server:  # the request's own fault: asked once
        _, failures, stats = answer_all(server.base_url, requests_csqa[:2], check=False)
        assert server.stats.posts == 2 and stats.retried == 0
    failure = failures[requests_csqa[0]["custom_id"]]
    assert failure.reason == "error_reply"
    assert str(failure) == ("the server answered 200 with an error (The proxy could not serve the request (model_not_supported).; "
                            "code model_not_supported)")
    with serve(error_200="server_overloaded") as server:  # may pass later: retried, and the last message kept
        _, failures, stats = answer_all(server.base_url, requests_csqa[:1], check=False, max_retries=2)
        assert server.stats.posts == 3 and stats.retry_reasons == {"error_reply": 2}
    assert "The proxy could not serve the request (server_overloaded)" in str(failures[requests_csqa[0]["custom_id"]])


def test_a_reply_far_beyond_max_tokens_is_flagged_once(requests_csqa):
    seen = {}
    with serve(oversized=200_000) as server:
        replies, failures, stats = answer_all(server.base_url, requests_csqa[:3], seen=seen)
    assert len(replies) == 3 and not failures and stats.oversized == 3
    asked = requests_csqa[0]["body"]["max_tokens"]
    assert seen["warnings"] == [f"a reply of 200,000 characters came for max_tokens {asked} (more than 20 characters a token): "
                                "the server ignores max_tokens; build rejects such samples as too_long"]


def test_timeouts_and_bad_requests_fail_the_request_not_the_run(requests_csqa):
    with serve(latency=1.0) as server:
        _, failures, stats = answer_all(server.base_url, requests_csqa[:1], timeout=0.2, max_retries=1)
        assert failures[requests_csqa[0]["custom_id"]].reason == "timeout"
        assert server.stats.posts == 2 and stats.retry_reasons == {"timeout": 1}
    broken = {"custom_id": "broken", "body": {"model": "m", "n": 1}}  # no messages: a 400
    with serve() as server:
        replies, failures, _ = answer_all(server.base_url, [broken, requests_csqa[0]])
        assert server.stats.posts == 2
    assert failures["broken"].reason == "400" and "messages" in str(failures["broken"])
    assert requests_csqa[0]["custom_id"] in replies


# --- cache and output file -----------------------------------------------------------------------

def test_cache_round_trip_damage_and_sharing(tmp_path, requests_csqa):
    digest = request_hash(requests_csqa[0])
    assert digest == request_hash({"custom_id": "other", "body": dict(reversed(list(requests_csqa[0]["body"].items())))})
    response = {"status_code": 200, "request_id": "req_1", "body": {"choices": []}}
    with ResponseCache(tmp_path / "cache") as cache:
        assert cache.get(digest) is None and not (tmp_path / "cache").exists()  # nothing made by a lookup
        cache.put(digest, response)
        assert cache.get(digest) == response and digest in cache and len(cache) == 1
        with ResponseCache(tmp_path / "cache") as other:  # another run sharing the cache sees it
            assert other.get(digest) == response
            other.put("0" * 64, {"body": "not an object"})
        assert cache.get("0" * 64) is None  # a damaged entry is asked again rather than trusted

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / ResponseCache.FILE).write_text("this is not a database" * 100)
    with pytest.raises(TinyThinkerError, match="cannot (use|read) the answer cache"):
        ResponseCache(tmp_path / "broken").get(digest)


def test_output_file_appends_once_cuts_torn_tail_and_locks(tmp_path, requests_csqa):
    out = tmp_path / "out.jsonl"
    response = {"status_code": 200, "request_id": "req_1", "body": {"choices": [{"index": 0, "message": {"content": "x"}}]}}
    lines = [output_line(r, response, round_index=1) for r in requests_csqa[:3]]
    digest = request_hash(requests_csqa[0])
    text = output_line_text(requests_csqa[0], encode_response(response), round_index=1, digest=digest)
    assert text.endswith("\n") and json.loads(text) == lines[0]  # the encode-once path writes the same line
    with ResponsesFile(out) as output:
        assert all(output.append(line) for line in lines)
        assert not output.append(lines[0])  # never twice
        with pytest.raises(TinyThinkerError, match="another `tinythinker teach` is writing"):
            ResponsesFile(out).__enter__()
    with out.open("ab") as handle:  # what a kill in the middle of a write leaves
        handle.write(json.dumps(lines[0]).encode()[:50])
    with ResponsesFile(out) as output:
        assert len(output.done) == 3
    assert out.read_bytes().endswith(b"\n") and len(read_output_lines(out)) == 3
    assert read_output_lines(out)[0] == lines[0] and lines[0]["custom_id"] == requests_csqa[0]["custom_id"]

    missing = tmp_path / "none.jsonl"
    with ResponsesFile(missing, readonly=True) as output:
        assert not output.done
    assert not missing.exists()

    other = tmp_path / "other.jsonl"
    other.write_text('{"a": 1}\n')
    with pytest.raises(TinyThinkerError, match=f"{other}:1: not an OpenAI Batch output line"):
        ResponsesFile(other).__enter__()
    with pytest.raises(TinyThinkerError, match="cannot open the output file"):
        ResponsesFile(tmp_path).__enter__()
    assert os.listdir(tmp_path)  # nothing removed


def test_import_batch_rejects_bad_files_with_file_and_line(tmp_path, requests_csqa):
    from tinythinker.data.teacher.teach import import_batch

    requests = tmp_path / "in.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in requests_csqa[:2]))
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]}
    good = {"custom_id": requests_csqa[0]["custom_id"], "response": {"status_code": 200, "request_id": "r", "body": body}, "error": None}
    cases = [
        ("{not json\n", "batch.jsonl:1: not valid JSON"),
        (json.dumps(good) + "\n[1, 2]\n", "batch.jsonl:2: expected a JSON object"),
        (json.dumps({**good, "custom_id": ["x"]}) + "\n", "batch.jsonl:1: custom_id ['x'] is not in"),
        (b"\xff\xfe".decode("latin-1") + "\n", "not valid JSON"),
    ]
    for text, fragment in cases:
        (tmp_path / "batch.jsonl").write_text(text)
        with pytest.raises(TinyThinkerError, match=re.escape(fragment)):
            import_batch([tmp_path / "batch.jsonl"], requests, tmp_path / "out.jsonl", cache_dir=tmp_path / "cache")
    with pytest.raises(TinyThinkerError, match="Batch output file not found"):
        import_batch([tmp_path / "missing.jsonl"], requests, tmp_path / "out.jsonl", cache_dir=tmp_path / "cache")
    requests.write_text(json.dumps(requests_csqa[0]) + "\n" + json.dumps(requests_csqa[0]) + "\n")
    with pytest.raises(TinyThinkerError, match="in.jsonl:2: custom_id .* appears twice"):
        import_batch([tmp_path / "batch.jsonl"], requests, tmp_path / "out.jsonl", cache_dir=tmp_path / "cache")
    assert {p.name for p in tmp_path.iterdir()} <= {"in.jsonl", "batch.jsonl", "out.jsonl", "cache"}  # nothing else touched
