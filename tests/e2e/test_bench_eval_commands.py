"""`dserve bench` and `dserve eval` run as the README writes them, against a real server on the
embedded model, with a smaller count so the suite stays short: exit status, a table (not JSON)
on stdout, JSON with --json, progress lines on stderr (not a terminal here), and the server's
reason when every request fails."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
DSERVE_SCRIPT = Path(sys.executable).with_name("dserve")
# The installed console script, as a user types it; `python -m dserve` where there is none.
DSERVE = [str(DSERVE_SCRIPT)] if DSERVE_SCRIPT.exists() else [sys.executable, "-m", "dserve"]
COMMAND_TIMEOUT_S = 900  # a generous ceiling, not a speed check: a busy 2-core machine is slow


def readme_command(subcommand: str, url: str) -> list[str]:
    """The README's `dserve SUBCOMMAND ...` line, with its --url pointed at `url`."""
    found = re.findall(rf"`(dserve {subcommand} [^`]*)`", README.read_text())
    assert found, f"README.md shows no `dserve {subcommand} ...` command"
    argv = shlex.split(found[0])[1:]
    argv[argv.index("--url") + 1] = url
    return [*DSERVE, *argv]


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


def assert_not_json(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_readme_bench_prints_a_table_and_progress(server):
    done = run(readme_command("bench", server.url) + ["--requests", "8"])

    assert done.returncode == 0, done.stdout + done.stderr
    assert_not_json(done.stdout)
    assert re.search(r"Requests ok / failed\s+8 / 0", done.stdout), done.stdout
    assert "concurrency 32" in done.stdout and "Requests/sec" in done.stdout
    assert "bench: 8/8 requests (100%)" in done.stderr  # plain progress lines: stderr is no terminal


def test_readme_bench_with_json_prints_only_json(server):
    done = run(readme_command("bench", server.url) + ["--requests", "4", "--json"])

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["summary"]["requests_ok"] == 4 and report["summary"]["requests_failed"] == 0
    assert report["config"]["concurrency"] == 32 and report["summary"]["output_tokens"] > 0


def test_bench_whose_every_request_fails_says_why_and_exits_1(server):
    # 600 new tokens cannot fit the embedded model's 512-token context: the server answers 400
    done = run(readme_command("bench", server.url) + ["--requests", "4", "--max-tokens", "600"])

    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"Requests ok / failed\s+0 / 4", done.stdout), done.stdout
    assert re.search(r"HTTP 400\s+4\s+prompt \(\d+ tokens\) \+ generation .* exceeds the model's context of 512", done.stdout)
    assert "error: all 4 requests failed (HTTP 400: prompt" in done.stderr, done.stderr


def test_readme_eval_prints_a_table_and_progress(server):
    done = run(readme_command("eval", server.url) + ["--samples", "10"])

    assert done.returncode == 0, done.stdout + done.stderr
    assert_not_json(done.stdout)
    header, rule, row = done.stdout.splitlines()[:3]
    assert header.split()[:3] == ["algorithm", "acc", "garbage"] and set(rule) <= {"-", " "}
    assert row.split()[0] == "fastdllm/dual_cache" and row.split()[-1] == "threshold=0.9"
    assert float(row.split()[1]) >= 0.5  # the recorded accuracy is 95%; 10 examples move it by 10 points
    assert "on 10 held-out examples (threshold=0.9)" in done.stderr
    assert "fastdllm/dual_cache: 10/10 requests (100%)" in done.stderr


def test_readme_eval_with_json_prints_only_json(server):
    done = run(readme_command("eval", server.url) + ["--samples", "4", "--json"])

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["num_samples"] == 4
    (result,) = report["results"]
    assert result["algorithm"] == "fastdllm/dual_cache" and result["params"] == {"threshold": 0.9}
    assert result["n"] == 4 and result["errors"] == 0 and "failures" not in result


def test_eval_drops_the_default_threshold_for_an_algorithm_that_refuses_it(server):
    # fastdllm/apd lists a threshold parameter but commits by its own rule and answers 400 to one
    done = run(readme_command("eval", server.url) + ["--algorithm", "fastdllm/apd", "--samples", "3", "--json"])

    assert done.returncode == 0, done.stdout + done.stderr
    assert "fastdllm/apd refuses threshold 0.9" in done.stderr
    by_algorithm = {r["algorithm"]: r for r in json.loads(done.stdout)["results"]}
    assert by_algorithm["fastdllm/apd"]["params"] == {} and by_algorithm["fastdllm/apd"]["errors"] == 0
    assert by_algorithm["fastdllm/dual_cache"]["params"] == {"threshold": 0.9}
