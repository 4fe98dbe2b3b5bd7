"""lm-evaluation-harness (pinned, the `lm-eval` extra) against a real server through
`dserve lm-eval`: the repository's two tasks built from the embedded task family, scores checked
against `dserve eval` (generation) and against /v1/loglikelihood called directly (multiple
choice) on the same examples."""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from dserve_ops.evaluation.choices import END_OF_TURN, multiple_choice_items

DSERVE_SCRIPT = Path(sys.executable).with_name("dserve")
DSERVE = [str(DSERVE_SCRIPT)] if DSERVE_SCRIPT.exists() else [sys.executable, "-m", "dserve"]
LIMIT = 24
MC_NUM = 16


@pytest.mark.slow
def test_lm_eval_scores_match_dserves_own(server, model_id, tmp_path):
    pytest.importorskip("lm_eval")
    args = [
        *DSERVE,
        "lm-eval",
        "--model",
        "dserve",
        "--model_args",
        f"base_url={server.url},mc_num={MC_NUM}",
        "--tasks",
        "dserve_tasks_mc,dserve_tasks_gen",
        "--limit",
        str(LIMIT),
        "--output_path",
        str(tmp_path / "lm_eval"),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    (results_file,) = (tmp_path / "lm_eval").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    lm_eval_mc = results["dserve_tasks_mc"]["acc,none"]
    lm_eval_gen = results["dserve_tasks_gen"]["exact_match,strip"]

    # generation: dserve eval on the same held-out examples (seed 1234, first LIMIT), same decoding
    done = subprocess.run(
        [*DSERVE, "eval", "--url", server.url, "--samples", str(LIMIT), "--json", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dserve_eval = json.loads(done.stdout)["results"][0]["accuracy"]
    assert lm_eval_gen == pytest.approx(dserve_eval)

    # multiple choice: the native route on the same items, text as lm-eval sends it
    right = 0
    for item in multiple_choice_items(LIMIT):
        body = {
            "model": model_id,
            "context": item.context,
            "continuations": [c + END_OF_TURN for c in item.choices],
            "mc_num": MC_NUM,
            "check_greedy": False,
        }
        scores = [
            r["loglikelihood"] for r in httpx.post(server.url + "/v1/loglikelihood", json=body, timeout=600).json()["results"]
        ]
        right += scores.index(max(scores)) == item.gold
    assert lm_eval_mc == pytest.approx(right / LIMIT)
    assert lm_eval_mc >= 0.75 and lm_eval_gen >= 0.75  # the embedded model: about 95% on both
