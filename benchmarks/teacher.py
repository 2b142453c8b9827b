"""Teacher client benchmark: throughput against a local OpenAI-compatible server, and dry-run accuracy.

    python benchmarks/teacher.py [--requests 2000] [--concurrency 64] [--latency 0.1] [--raw ../shared/data/raw/csqa]

Prints one JSON object:

- ``throughput``: a full ``teach`` round (requests built from real CSQA questions, n=8, cache and
  output file written as answers come) against ``tests/openai_server.py`` in its own process with a
  fixed latency (from a request's arrival to its answer): requests/s achieved vs the ideal ``min(concurrency / latency, rpm / 60)``
  (target: >= 90% at 2,000 requests, concurrency 64, 100 ms).
- ``default_limits``: the same with the default flags (no ``--rpm`` / ``--tpm``: limits come from the
  server's x-ratelimit headers) against a server that sends none, as vLLM, Ollama or llama.cpp:
  only the concurrency bounds the rate (target: >= 90% of concurrency / latency, 640 req/s).
- ``bare_aiohttp``: plain aiohttp posting the same bodies at the same concurrency: the ceiling this
  machine and server allow (the client's own overhead is the gap to it).
- ``rate_limited``: the same with an ``rpm`` budget below the concurrency bound (the limiter's accuracy).
- ``server_limited``: default flags against a server whose x-ratelimit headers report (and enforce) a
  bucket of ``--server-limit`` requests refilling in one second: the time vs the least the bucket
  allows, and how many requests the server refused with 429.
- ``dry_run``: prompt tokens estimated offline (word-piece estimate, no tokenizer) vs the
  ``usage.prompt_tokens`` the server reports, and the completion forecast vs the server's
  ``completion_tokens``, over requests of all three data sets. The server counts with the real
  ``o200k_base`` tokenizer when one is installed offline (``bpe-openai``, or tiktoken with a cached
  encoding): then the prompt figure is a true tokenizer comparison; otherwise it says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from teacher_helpers import write_tiny_csqa  # noqa: E402

from tinythinker.data.sources import load_questions  # noqa: E402
from tinythinker.data.teacher.client import Limits  # noqa: E402
from tinythinker.data.teacher.cost import TokenCounter  # noqa: E402
from tinythinker.data.teacher.requests import build_request  # noqa: E402
from tinythinker.data.teacher.teach import TeachOptions, estimate, teach  # noqa: E402

SHARED_RAW = REPO.parent / "shared" / "data" / "raw"


class Server:
    """tests/openai_server.py in a subprocess (the client gets this process's core to itself)."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen([sys.executable, str(REPO / "tests" / "openai_server.py"), "--port", "0", *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.base_url = self.process.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise RuntimeError(f"test server did not start: {self.process.stderr.read()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used (Linux /proc; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict:
        with urllib.request.urlopen(self.base_url.rsplit("/v1", 1)[0] + "/stats") as reply:
            return json.load(reply)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(30)


def throughput(raw: str, n: int, concurrency: int, latency: float, rpm: float | None, work: Path, *, tpm: float | None = 1e12,
               server_args: tuple[str, ...] = ()) -> dict:
    """A teach round against the server; ``rpm`` / ``tpm`` None: the default (the server's headers)."""
    with Server("--latency", str(latency), "--usage", "chars", *server_args) as server:
        options = TeachOptions(dataset="csqa", raw=raw, out=work / "out.jsonl", model="gpt-4o-2024-05-13", limit=n,
                               base_url=server.base_url, cache_dir=work / "cache",
                               limits=Limits(concurrency=concurrency, rpm=rpm, tpm=tpm, timeout=60))
        server_cpu, client_cpu = server.cpu_seconds(), _own_cpu_seconds()
        result = teach(options, api_key="sk-benchmark")
        server_cpu, client_cpu = server.cpu_seconds() - server_cpu, _own_cpu_seconds() - client_cpu
        report = result.rounds[0]
        stats = server.stats()
    ideal = min(concurrency / latency if latency else float("inf"), rpm / 60.0 if rpm else float("inf"))
    achieved = report.answered / report.seconds
    return {
        "requests": report.answered, "failed": report.failed, "concurrency": concurrency, "latency_s": latency, "rpm": rpm, "tpm": tpm,
        "limits": report.limits,
        "seconds": round(report.seconds, 3), "requests_per_s": round(achieved, 1), "ideal_requests_per_s": round(ideal, 1),
        "fraction_of_ideal": round(achieved / ideal, 3), "server_posts": stats["posts"], "server_max_in_flight": stats["max_in_flight"],
        "server_429": stats["statuses"].get("429", 0),
        # CPU per request (the client's includes loading the questions and building the requests):
        # with a free core each, the client alone could serve 1000 / client_cpu_ms_per_request requests/s
        "client_cpu_ms_per_request": round(1000 * client_cpu / report.answered, 3),
        "server_cpu_ms_per_request": round(1000 * server_cpu / report.answered, 3),
    }


def server_limited(raw: str, n: int, concurrency: int, latency: float, limit: int, work: Path) -> dict:
    """Default flags against a server that reports and enforces a bucket of ``limit`` requests
    refilling in one second: the least time is the burst of ``limit``, then ``limit`` per second
    (or the concurrency bound, if lower), plus one latency."""
    run = throughput(raw, n, concurrency, latency, None, work, tpm=None,
                     server_args=("--limit-requests", str(limit), "--limit-window", "1"))
    rate = min(limit, concurrency / latency if latency else float("inf"))
    least = max(n / (concurrency / latency) if latency else 0.0, (n - limit) / rate) + latency
    return {**{k: run[k] for k in ("requests", "failed", "limits", "seconds", "requests_per_s", "server_posts", "server_429")},
            "server_bucket": f"{limit} requests, refilling {limit}/s", "least_seconds": round(least, 3),
            "fraction_of_least_time": round(least / run["seconds"], 3)}


def bare_client(raw: str, n: int, concurrency: int, latency: float) -> dict:
    """The ceiling of this machine and server: plain aiohttp posting the same request bodies with the
    same concurrency (no cache, no output, no retries, no budgets). The client's overhead is the gap
    between its fraction of the ideal and this one."""
    import asyncio

    import aiohttp

    questions = load_questions("csqa", raw).splits["train"][:n]
    bodies = [json.dumps(build_request(q, dataset="csqa", model="gpt-4o-2024-05-13", seed=0)["body"]).encode() for q in questions]

    async def post_all(url: str) -> float:
        pending = list(reversed(bodies))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            async def worker() -> None:
                while pending:
                    async with session.post(url, data=pending.pop(), headers={"Content-Type": "application/json"}) as reply:
                        await reply.json()

            began = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.monotonic() - began

    with Server("--latency", str(latency), "--usage", "chars") as server:
        seconds = asyncio.run(post_all(server.base_url + "/chat/completions"))
    ideal = concurrency / latency if latency else float("inf")
    return {"requests": len(bodies), "seconds": round(seconds, 3), "requests_per_s": round(len(bodies) / seconds, 1),
            "fraction_of_ideal": round(len(bodies) / seconds / ideal, 3)}


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def dry_run_error(raw_root: Path | None, work: Path, per_dataset: int) -> dict:
    """Estimate (no tokenizer) vs the usage the server reports for the same requests."""
    datasets = {}
    sources = {"csqa": raw_root / "csqa", "obqa": raw_root / "obqa", "strategyqa": raw_root / "strategyqa"} if raw_root else {
        "csqa": write_tiny_csqa(work / "tiny-csqa", train=per_dataset + 20, dev=10)}
    totals = {"prompt_estimate": 0, "prompt_server": 0, "completion_forecast": 0, "completion_server": 0}
    with Server("--latency", "0") as server:
        for name, raw in sources.items():
            options = TeachOptions(dataset=name, raw=str(raw), out=work / f"dry-{name}.jsonl", model="gpt-4o-2024-05-13", limit=per_dataset,
                                   base_url=server.base_url, cache_dir=work / "dry-cache", limits=Limits(concurrency=16, rpm=1e6, tpm=1e12))
            questions = load_questions(name, raw, seed=options.seed).splits["train"][:per_dataset]
            requests = [build_request(q, dataset=name, model=options.model, seed=options.seed) for q in questions]
            guess = estimate(requests, options, counter=TokenCounter(options.model, exact=False))
            before = server.stats()
            report = teach(options, api_key="sk-benchmark").rounds[0]
            datasets[name] = {
                "requests": len(requests),
                "prompt_tokens_estimate": guess.prompt_tokens, "prompt_tokens_server": report.prompt_tokens,
                "prompt_error": round(guess.prompt_tokens / report.prompt_tokens - 1, 4),
                "completion_tokens_forecast": guess.completion_tokens, "completion_tokens_server": report.completion_tokens,
                "completion_error": round(guess.completion_tokens / report.completion_tokens - 1, 4),
                "server_posts": server.stats()["posts"] - before["posts"],
            }
            totals["prompt_estimate"] += guess.prompt_tokens
            totals["prompt_server"] += report.prompt_tokens
            totals["completion_forecast"] += guess.completion_tokens
            totals["completion_server"] += report.completion_tokens
    reference = TokenCounter("gpt-4o-2024-05-13")
    both_estimate = totals["prompt_estimate"] + totals["completion_forecast"]
    both_server = totals["prompt_server"] + totals["completion_server"]
    return {
        "server_token_counter": reference.method,
        "server_counts_with_real_tokenizer": reference.exact,
        "estimate_counter": TokenCounter("gpt-4o-2024-05-13", exact=False).method,
        "per_dataset": datasets,
        "prompt_error": round(totals["prompt_estimate"] / totals["prompt_server"] - 1, 4),
        "completion_error": round(totals["completion_forecast"] / totals["completion_server"] - 1, 4),
        "total_error": round(both_estimate / both_server - 1, 4),
        "note": "the test server writes its completions from the request's few-shot exemplars, the text the forecast is "
                "based on: the completion figure checks the accounting, not how long a real teacher writes",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--rpm", type=float, default=1_000_000)
    parser.add_argument("--limited-rpm", type=float, default=6000, help="rpm of the rate-limited run (below the concurrency bound)")
    parser.add_argument("--server-limit", type=int, default=100,
                        help="the server-limited run: a bucket of this many requests refilling in 1 s, in the server's headers")
    parser.add_argument("--raw", default=str(SHARED_RAW) if SHARED_RAW.exists() else None,
                        help="folder with csqa/ obqa/ strategyqa/ raw folders (default: ../shared/data/raw; else synthetic questions)")
    parser.add_argument("--dry-run-requests", type=int, default=100, help="requests per data set for the dry-run error")
    parser.add_argument("--repeat", type=int, default=1, help="throughput runs (all are reported; the machine may be shared)")
    args = parser.parse_args()
    raw_root = Path(args.raw) if args.raw else None
    with tempfile.TemporaryDirectory(prefix="tinythinker-teacher-bench-") as tmp:
        work = Path(tmp)
        csqa = str(raw_root / "csqa") if raw_root else str(write_tiny_csqa(work / "csqa", train=int(args.requests * 1.3) + 20, dev=10))
        started = time.monotonic()
        out = {"load_average_1min_before": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
        runs = [throughput(csqa, args.requests, args.concurrency, args.latency, args.rpm, work / f"run{i}") for i in range(args.repeat)]
        out["throughput"] = max(runs, key=lambda run: run["fraction_of_ideal"])
        if args.repeat > 1:
            out["throughput_all_runs"] = [run["fraction_of_ideal"] for run in runs]
        defaults = [throughput(csqa, args.requests, args.concurrency, args.latency, None, work / f"default{i}", tpm=None) for i in range(args.repeat)]
        out["default_limits"] = max(defaults, key=lambda run: run["fraction_of_ideal"])
        if args.repeat > 1:
            out["default_limits_all_runs"] = [run["fraction_of_ideal"] for run in defaults]
        out["bare_aiohttp"] = bare_client(csqa, args.requests, args.concurrency, args.latency)
        out["rate_limited"] = throughput(csqa, min(args.requests, 500), args.concurrency, args.latency, args.limited_rpm, work / "limited")
        out["server_limited"] = server_limited(csqa, min(args.requests, 500), args.concurrency, args.latency, args.server_limit, work / "server-limited")
        out["dry_run"] = dry_run_error(raw_root, work, args.dry_run_requests)
        out["load_average_1min_after"] = round(os.getloadavg()[0], 2)
        out["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
