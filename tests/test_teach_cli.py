"""`tinythinker teach` as a user runs it: a real subprocess against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from openai_server import serve
from teacher_helpers import read_output_lines, write_tiny_csqa
from tinythinker.data.sources import load_questions
from tinythinker.data.teacher.cache import ResponseCache, request_hash
from tinythinker.data.teacher.requests import build_request

SECRET = "sk-test-5ecret-never-written-0123456789"
TRAIN = 30  # write_tiny_csqa(train=40, dev=10): 30 train, 10 validation, 10 test questions


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return write_tiny_csqa(tmp_path_factory.mktemp("raw") / "csqa")


@pytest.fixture
def env(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    environment.update(OPENAI_API_KEY=SECRET, TINYTHINKER_CACHE_DIR=str(tmp_path / "cache"), COLUMNS="120")
    return environment


def teach(raw, out, *args, env, base_url=None, check=False, popen=False):
    command = [sys.executable, "-m", "tinythinker", "teach", "csqa", "--raw", str(raw), "--out", str(out), "--model", "gpt-4o-2024-05-13",
               *args]  # default limits: the server's x-ratelimit headers (the test server sends none unless told)
    if base_url:
        command += ["--base-url", base_url]
    if popen:  # as from a terminal: Ctrl-C interrupts (a runner started in the background ignores SIGINT, and so would
        # its children: Python keeps an ignored SIGINT ignored)
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def summary(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_answered_once(out: Path, expected_ids) -> list[dict]:
    lines = read_output_lines(out)
    ids = Counter(line["custom_id"] for line in lines if line["round"] == 1)
    assert set(ids) == set(expected_ids) and set(ids.values()) == {1}
    for line in lines:  # OpenAI Batch API output shape
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["body"]["object"] == "chat.completion"
    return lines


def train_ids(raw) -> list[str]:
    return [q.id for q in load_questions("csqa", raw).splits["train"]]


def wait_for_lines(out: Path, count: int, process, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= count:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{out} did not reach {count} lines")


def no_secret_anywhere(tmp_path: Path, *texts: str) -> None:
    for text in texts:
        assert SECRET not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# --- dry run -------------------------------------------------------------------------------------

def test_dry_run_estimates_without_sending_or_writing(raw, tmp_path, env):
    out = tmp_path / "teacher" / "csqa.jsonl"
    result = teach(raw, out, "--dry-run", "--json", env=env, check=True)
    estimate = summary(result)["estimate"]
    assert estimate["requests"] == TRAIN and estimate["samples"] == 8 * TRAIN
    assert estimate["prompt_tokens"] > 1000 * TRAIN  # 8 few-shot exemplars per request
    assert 0 < estimate["completion_tokens"] <= estimate["completion_tokens_max"] == 8 * 256 * TRAIN
    assert 0 < estimate["cost_usd"] < estimate["cost_usd_max"]
    assert not out.exists() and not (tmp_path / "cache").exists()

    everything = summary(teach(raw, out, "--dry-run", "--json", "--splits", "train,validation,test", "--limit", "4", "--batch-api", env=env, check=True))
    assert everything["estimate"]["requests"] == 12 and everything["estimate"]["batch_api"]

    table = teach(raw, out, "--dry-run", "--model", "my-local-model", env=env, check=True).stdout
    assert "requests" in table and "30" in table and "unknown" in table and "--prices" in table


def test_dry_run_says_where_the_rate_limits_come_from(raw, tmp_path, env):
    out = tmp_path / "csqa.jsonl"
    default = teach(raw, out, "--dry-run", "--concurrency", "16", env=env, check=True).stdout
    text = " ".join(default.replace("│", " ").split())
    assert "read from the server's x-ratelimit headers at run time; none if it sends none" in text and "--concurrency 16" in text
    limits = summary(teach(raw, out, "--dry-run", "--json", "--rpm", "500", "--tpm", "30000", env=env, check=True))["limits"]
    assert limits == {"rpm": 500, "tpm": 30000, "concurrency": 32, "source": "500 rpm / 30,000 tpm (--rpm / --tpm)"}
    limits = summary(teach(raw, out, "--dry-run", "--json", "--rpm", "500", env=env, check=True))["limits"]
    assert limits["source"].startswith("500 rpm (--rpm); tokens per minute read from the server's x-ratelimit headers")


# --- a full run, faults included -----------------------------------------------------------------

def test_run_through_faults_then_rerun_sends_nothing(raw, tmp_path, env):
    out = tmp_path / "teacher" / "csqa.jsonl"
    with serve(latency=0.02, rate_limit_every=6, retry_after=0.05, fail_every=13, drop_every=17, max_choices=5, truncate_every=9) as server:
        result = teach(raw, out, "--json", "--concurrency", "8", env=env, base_url=server.base_url, check=True)
        report = summary(result)["rounds"][0]
        first_posts = server.stats.posts
        assert report["to_send"] == TRAIN and report["failed"] == 0 and report["retried"] > 0
        assert report["limits"] == "limits: none (server sends no limit headers; concurrency 8)"  # 429s honoured all the same
        assert report["n_completions"] == 3 * TRAIN  # 5 of 8 choices, the rest as n=1 requests
        lines = assert_answered_once(out, train_ids(raw))
        assert all(len(line["response"]["body"]["choices"]) == 8 for line in lines)
        assert any(c["finish_reason"] == "length" for line in lines for c in line["response"]["body"]["choices"])

        again = summary(teach(raw, out, "--json", env=env, base_url=server.base_url, check=True))["rounds"][0]
        assert again["already"] == TRAIN and again["to_send"] == 0
        assert server.stats.posts == first_posts  # nothing sent twice

        out.unlink()  # a lost output file is rebuilt from the cache, still without sending
        cached = summary(teach(raw, out, "--json", env=env, base_url=server.base_url, check=True))["rounds"][0]
        assert cached["cached"] == TRAIN and server.stats.posts == first_posts
        assert_answered_once(out, train_ids(raw))
    no_secret_anywhere(tmp_path, result.stdout, result.stderr)

    # the output is what `build` reads (issue 2's reader and selection)
    from tinythinker.data.teacher.responses import read_responses
    from tinythinker.data.teacher.select import select_rationales

    questions = load_questions("csqa", raw)
    responses = read_responses([out], questions)
    assert responses.samples == 8 * TRAIN
    selection = select_rationales(questions, responses)
    assert selection.counts["train"].with_rationales == TRAIN


def test_sigkill_at_any_point_then_resume_answers_each_request_once(raw, tmp_path, env):
    out = tmp_path / "csqa.jsonl"
    cache = ResponseCache(tmp_path / "cache")
    questions = load_questions("csqa", raw).splits["train"]
    hashes = {request_hash(build_request(q, dataset="csqa", model="gpt-4o-2024-05-13")) for q in questions}
    with serve(latency=0.1) as server:
        for stop_after in (1, 12, 24, None):  # kill early, mid-way and late; then run to the end
            cached_before = {digest for digest in hashes if digest in cache}
            server.reset_stats()
            process = teach(raw, out, "--concurrency", "4", env=env, base_url=server.base_url, popen=True)
            if stop_after is None:
                assert process.wait(120) == 0, process.communicate()
            else:
                wait_for_lines(out, stop_after, process)
                process.send_signal(signal.SIGKILL)
                process.wait(30)
            assert not set(server.stats.received) & cached_before, "a cached request was sent again"
            assert len(server.stats.received) == sum(server.stats.received.values())  # nor anything twice in one run
            lines = read_output_lines(out)
            assert len(lines) == len({line["custom_id"] for line in lines})  # never a duplicate, never torn
            if stop_after == 1:
                assert len(lines) < TRAIN  # the kill really came mid-run
    assert_answered_once(out, train_ids(raw))
    assert all(digest in cache for digest in hashes)


def test_ctrl_c_stops_cleanly_and_resumes(raw, tmp_path, env):
    out = tmp_path / "csqa.jsonl"
    with serve(latency=0.1) as server:
        process = teach(raw, out, "--concurrency", "2", env=env, base_url=server.base_url, popen=True)
        wait_for_lines(out, 3, process)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 130 and "run the same command again" in " ".join(stderr.split())
        teach(raw, out, env=env, base_url=server.base_url, check=True)
    assert_answered_once(out, train_ids(raw))


def test_rounds_reask_only_what_is_missing_with_doubled_budget(raw, tmp_path, env):
    out = tmp_path / "csqa.jsonl"
    with serve(truncate_every=5) as server:
        report = summary(teach(raw, out, "--json", "--rounds", "2", env=env, base_url=server.base_url, check=True))
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    lines = read_output_lines(out)
    second = [line for line in lines if line["round"] == 2]
    assert second and len(second) == report["rounds"][1]["requests"] < len(lines)
    assert {line["max_tokens"] for line in second} == {512}  # cut off at 256: doubled
    cut = Counter(line["custom_id"] for line in lines if line["round"] == 1
                  for c in line["response"]["body"]["choices"] if c["finish_reason"] == "length")
    assert {line["custom_id"]: len(line["response"]["body"]["choices"]) for line in second} == dict(cut)

    with serve() as server:  # a smaller run over the same file: its rounds are already answered
        fewer = summary(teach(raw, out, "--json", "--rounds", "2", "--limit", "10", env=env, base_url=server.base_url, check=True))
        assert server.stats.posts == 0
    assert [r["to_send"] for r in fewer["rounds"]] == [0, 0] and fewer["rounds"][0]["already"] == 10


def test_validation_and_test_questions_on_request(raw, tmp_path, env):
    out = tmp_path / "csqa.jsonl"
    with serve() as server:
        teach(raw, out, "--splits", "train,validation,test", "--limit", "3", env=env, base_url=server.base_url, check=True)
    by_split = {split: {q.id for q in qs[:3]} for split, qs in load_questions("csqa", raw).splits.items()}
    asked = {line["custom_id"] for line in read_output_lines(out)}
    assert asked == by_split["train"] | by_split["validation"] | by_split["test"]

    other = teach(raw, out, "--splits", "train", "--limit", "3", "--model", "gpt-4o-mini", "--dry-run", env=env)
    assert other.returncode == 2 and "different request" in other.stderr  # answers of two settings never mix in one file


def test_limits_from_headers_are_shown_bad_ones_warned_once_and_flags_win(raw, tmp_path, env):
    out = tmp_path / "csqa.jsonl"
    bad = "x-ratelimit-remaining-tokens=-5"  # nonsense on every reply
    with serve(limit_requests=600, limit_tokens=2_000_000, headers=bad, usage="chars") as server:
        result = teach(raw, out, "--json", "--concurrency", "8", env=env, base_url=server.base_url, check=True)
        assert server.stats.posts == TRAIN
    report = summary(result)["rounds"][0]
    assert report["limits"] == "limits: 600 rpm (server headers) / no tpm limit; concurrency 8"
    assert len(report["warnings"]) == 1 and "x-ratelimit-remaining-tokens header: '-5' is not a number of tokens" in report["warnings"][0]
    stderr = " ".join(result.stderr.split())
    assert stderr.count("Warning:") == 1 and stderr.count("x-ratelimit-remaining-tokens") == 1  # once, not per reply
    assert "limits: 600 rpm (server headers) / no tpm limit; concurrency 8" in stderr  # the live display's line

    out.unlink()
    with serve(limit_requests=600, limit_tokens=2_000_000, usage="chars") as server:
        result = teach(raw, out, "--limit", "5", "--rpm", "6000", "--cache-dir", str(tmp_path / "other-cache"), env=env, base_url=server.base_url, check=True)
    text = " ".join(result.stdout.split())
    assert "limits: 6,000 rpm (--rpm) / 2,000,000 tpm (server headers); concurrency 32" in text  # the flag wins for requests


# --- errors a user can cause ---------------------------------------------------------------------

def test_bad_key_unreachable_url_and_missing_key_are_one_line_errors(raw, tmp_path, env):
    out = tmp_path / "csqa.jsonl"
    with serve(api_key="sk-the-right-one") as server:
        result = teach(raw, out, env=env, base_url=server.base_url)
        assert server.stats.posts == 0
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: ") and "refused the API key (HTTP 401" in result.stderr
    assert "$OPENAI_API_KEY" in result.stderr
    no_secret_anywhere(tmp_path, result.stdout, result.stderr)

    result = teach(raw, out, env=env, base_url="http://127.0.0.1:9/v1")
    assert result.returncode == 2 and "cannot reach the teacher at http://127.0.0.1:9/v1" in result.stderr

    no_key = {k: v for k, v in env.items() if k != "OPENAI_API_KEY"}
    result = teach(raw, out, env=no_key)
    assert result.returncode == 2 and "$OPENAI_API_KEY is not set" in result.stderr
    assert not read_output_lines(out)


@pytest.mark.parametrize("args, fragment", [
    (["--splits", "train,dev"], "--splits"),
    (["--prices", "{tmp}/prices.yaml"], "needs exactly"),
    (["--out", "{tmp}"], "is a directory"),
])
def test_bad_arguments(raw, tmp_path, env, args, fragment):
    (tmp_path / "prices.yaml").write_text("gpt-4o-2024-05-13: {input: 1}\n")
    args = [a.format(tmp=tmp_path) for a in args]
    result = teach(raw, tmp_path / "out.jsonl", *args, env=env, base_url="http://127.0.0.1:9/v1")
    assert result.returncode != 0 and fragment in result.stderr and "Traceback" not in result.stderr


def test_refuses_an_output_file_that_is_not_teacher_output(raw, tmp_path, env):
    out = tmp_path / "notes.jsonl"
    out.write_text('{"note": "mine"}\n')
    result = teach(raw, out, env=env, base_url="http://127.0.0.1:9/v1")
    assert result.returncode == 2 and f"{out}:1: not an OpenAI Batch output line" in result.stderr
    assert out.read_text() == '{"note": "mine"}\n'


# --- Batch API -----------------------------------------------------------------------------------

def run_as_batch(batch_input: Path, batch_output: Path, base_url: str, fail: set[str]) -> None:
    """What OpenAI's Batch service does with an input file, done against the test server."""
    lines = []
    for number, raw_line in enumerate(batch_input.read_text().splitlines()):
        request = json.loads(raw_line)
        if request["custom_id"] in fail:
            lines.append({"id": f"batch_req_{number}", "custom_id": request["custom_id"], "response": None,
                          "error": {"code": "server_error", "message": "failed"}})
            continue
        post = urllib.request.Request(base_url + "/chat/completions", data=json.dumps(request["body"]).encode(),
                                      headers={"Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"})
        with urllib.request.urlopen(post) as reply:
            body = json.load(reply)
        lines.append({"id": f"batch_req_{number}", "custom_id": request["custom_id"],
                      "response": {"status_code": 200, "request_id": f"req_{number}", "body": body}, "error": None})
    batch_output.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_batch_api_round_trip(raw, tmp_path, env):
    out = tmp_path / "teacher" / "csqa.jsonl"
    result = teach(raw, out, "--batch-api", "--limit", "6", env=env, check=True)
    batch_input = tmp_path / "teacher" / "csqa.round1.batch-input.jsonl"
    assert str(batch_input) in result.stdout and "import-batch" in result.stdout
    requests = [json.loads(line) for line in batch_input.read_text().splitlines()]
    questions = load_questions("csqa", raw).splits["train"][:6]
    assert requests == [build_request(q, dataset="csqa", model="gpt-4o-2024-05-13") for q in questions]

    with serve() as server:
        batch_output = tmp_path / "batch-output.jsonl"
        failed = {questions[-1].id}
        run_as_batch(batch_input, batch_output, server.base_url, failed)
        command = [sys.executable, "-m", "tinythinker", "teach", "import-batch", str(batch_output), "--requests", str(batch_input),
                   "--out", str(out), "--json"]
        imported = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert imported.returncode == 0, imported.stderr
        assert json.loads(imported.stdout) == {"lines": 6, "imported": 5, "already": 0, "failed": 1,
                                               "failure_reasons": {"server_error": 1}, "missing": 1, "round": 1}
        lines = read_output_lines(out)
        assert [line["custom_id"] for line in lines] == [q.id for q in questions[:5]]
        assert [line["request_hash"] for line in lines] == [request_hash(r) for r in requests[:5]]
        assert {line["split_seed"] for line in lines} == {42}  # from the input's companion file

        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)  # importing twice adds nothing
        assert json.loads(again.stdout)["already"] == 5 and len(read_output_lines(out)) == 5

        posts = server.stats.posts
        rest = teach(raw, out, "--batch-api", "--limit", "6", env=env, check=True)  # only the failed request is left
        assert [json.loads(line)["custom_id"] for line in batch_input.read_text().splitlines()] == [questions[-1].id]
        assert "5 already answered" in " ".join(rest.stdout.split())
        teach(raw, out, "--limit", "6", env=env, base_url=server.base_url, check=True)
        assert server.stats.posts == posts + 1
    assert_answered_once(out, [q.id for q in questions])

    stray = tmp_path / "stray.jsonl"
    stray.write_text(json.dumps({"custom_id": "nope", "response": {"status_code": 200, "body": {}}, "error": None}) + "\n")
    bad = subprocess.run([sys.executable, "-m", "tinythinker", "teach", "import-batch", str(stray), "--requests", str(batch_input),
                          "--out", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and f"{stray}:1: custom_id 'nope' is not in" in bad.stderr


def test_build_refuses_a_seed_that_resplits_the_questions_the_teacher_was_asked(raw, tmp_path, env):
    out = tmp_path / "csqa.jsonl"
    with serve() as server:
        teach(raw, out, "--seed", "7", env=env, base_url=server.base_url, check=True)
    assert {line["split_seed"] for line in read_output_lines(out)} == {7}

    def build(*args):
        return subprocess.run([sys.executable, "-m", "tinythinker", "build", "csqa", "--raw", str(raw), "--responses", str(out),
                               "--out", str(tmp_path / "data"), "--no-progress", *args],
                              env=env, capture_output=True, text=True, timeout=180)

    refused = build()  # the default --seed 42 splits the questions otherwise
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "Error: the teacher was asked about the questions of the --seed 7 splits (teach --seed 7), and --seed 42 "
        "splits them otherwise: paid-for training questions would become validation or test questions; build "
        "with --seed 7")
    assert not (tmp_path / "data").exists()
    built = build("--seed", "7")
    assert built.returncode == 0, built.stderr
    card = (tmp_path / "data" / "README.md").read_text()
    assert "Splits (seed 7)" in card


def test_teach_help_lists_both_subcommands(env):
    result = subprocess.run([sys.executable, "-m", "tinythinker", "teach", "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "import-batch" in result.stdout and "ask" in result.stdout
