"""The README's facts and commands, checked against the code and run as written.

`dserve bench` and `dserve eval` in the README's form are run by their own e2e tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from dserve_ops.evaluation.tasks import KINDS, generate_examples

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_readme_starts_with_the_serve_and_test_commands():
    first = _blocks("bash")[0]
    commands = [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]
    assert commands == ["make serve", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    serve_recipe = makefile.split("\nserve:")[1].split("\n\n")[0]
    assert serve_recipe.strip().splitlines()[-1].strip() == "dserve"  # the server on the embedded model
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M), "CI must run the README's test command"


def test_task_table_is_what_the_generator_makes():
    rows = re.findall(r"^\| `(\w+)` \| `([^`]+)` \| `([^`]+)` \|$", README, re.M)
    assert [kind for kind, _, _ in rows] == list(KINDS)
    first_of_kind = {}
    for example in generate_examples(300, seed=0, split="heldout"):
        first_of_kind.setdefault(example.kind, example)
    for kind, prompt, answer in rows:
        assert (first_of_kind[kind].prompt, first_of_kind[kind].answer) == (prompt, answer)


def test_python_example_runs_as_written(server):
    (snippet,) = [b for b in _blocks("python") if "OpenAI(" in b]
    snippet = snippet.replace("http://127.0.0.1:8000/v1", server.url + "/v1")  # the test server's port
    out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "tenalp"  # "Reverse the word: planet"


def test_examples_client_runs(server):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "client.py"), "--url", server.url + "/v1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "chat: tenalp" in out.stdout


def test_dserve_plugins_lists_every_engine_in_the_readme_table():
    out = subprocess.run([sys.executable, "-m", "dserve", "plugins"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    table = README.split("## Engines and algorithms")[1].split("\n\n")[1]
    engines = re.findall(r"^\| `([\w-]+)`", table, re.M)
    assert engines
    for engine in engines:
        assert re.search(rf"engine\s+{engine}\b", out.stdout), (engine, out.stdout)


def _documented_error(when: str) -> tuple[int, str, str]:
    """(status, type, code) from docs/api.md's error table row whose 'when' is `when`."""
    api = (ROOT / "docs" / "api.md").read_text()
    m = re.search(rf"^\| (\d+) \| {re.escape(when)} \| `(\w+)` / `(\w+)` \|$", api, re.M)
    assert m, f"docs/api.md has no error row for {when!r}"
    return int(m[1]), m[2], m[3]


def test_documented_route_errors_are_what_the_server_answers(server):
    import httpx

    for when, method, path in [("unknown route", "GET", "/v1/nope"), ("wrong method on a route", "DELETE", "/v1/models")]:
        status, type_, code = _documented_error(when)
        r = httpx.request(method, server.url + path)
        assert (r.status_code, r.json()["error"]["type"], r.json()["error"]["code"]) == (status, type_, code)
