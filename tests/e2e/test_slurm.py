"""`dserve slurm submit|connect`.

Fast tests check the batch script `submit --dry-run` writes. The slow test runs a REAL
single-node SLURM cluster (munged + slurmctld + slurmd from Debian's slurm-wlm, started by
tests/slurm/start_cluster.sh, which apt-installs them when missing): it submits a CPU job
that runs `dserve serve` with the embedded model (DSERVE_TEST_MODEL overrides), `connect`
finds the node and port and its health check passes, a chat completion goes through, and
scancel drains and stops the server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dserve.cli import main

REPO = Path(__file__).resolve().parents[2]
START_CLUSTER = REPO / "tests" / "slurm" / "start_cluster.sh"
MODEL_ARGS = ["--model", os.environ["DSERVE_TEST_MODEL"]] if os.environ.get("DSERVE_TEST_MODEL") else []


def dry_run(capsys, *argv: str) -> str:
    rc = main(["slurm", "submit", "--dry-run", *argv])
    out = capsys.readouterr().out
    assert rc == 0, out
    return out


def sbatch_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


# --------------------------------------------------------------------------- the script (fast)


def test_dry_run_gpu_job(capsys, monkeypatch):
    monkeypatch.delenv("ACCOUNT", raising=False)
    monkeypatch.delenv("SLURM_ACCOUNT", raising=False)
    script = dry_run(
        capsys,
        "--gpus",
        "8",
        "--time",
        "04:00:00",
        "--mem",
        "128G",
        "--account",
        "A",
        "--partition",
        "P",
        "--job-name",
        "dserve",
        "--",
        "--model",
        "GSAI-ML/LLaDA-8B-Instruct",
        "--steps",
        "64",
    )
    lines = sbatch_lines(script)
    for want in (
        "--gres=gpu:8",
        "--time=04:00:00",
        "--mem=128G",
        "--account=A",
        "--partition=P",
        "--job-name=dserve",
        "--nodes=1",
    ):
        assert f"#SBATCH {want}" in lines, (want, lines)
    assert "#SBATCH --comment=dserve:port=8000" in lines
    assert "#SBATCH --signal=B:TERM@90" in lines  # the server drains before the time limit
    assert script.startswith("#!/bin/bash\n")
    assert 'echo "DSERVE_NODE=$DSERVE_NODE"' in script and 'echo "DSERVE_PORT=$DSERVE_PORT"' in script
    exec_line = next(line for line in script.splitlines() if line.startswith("exec "))
    assert exec_line.startswith('exec dserve serve --host 0.0.0.0 --port "$DSERVE_PORT" ')
    assert exec_line.endswith("--model GSAI-ML/LLaDA-8B-Instruct --steps 64")
    from dserve_ops.slurm import serve_accepts

    if serve_accepts("--gpus"):  # one worker per GPU of the allocation, behind the front
        assert " --gpus 8 " in exec_line
    assert "ssh -N -L" in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid shell


def test_dry_run_cpu_job_has_no_gres_and_account_from_env(capsys, monkeypatch):
    monkeypatch.setenv("ACCOUNT", "from-env")
    script = dry_run(capsys, "--gpus", "0", "--port", "0")
    lines = sbatch_lines(script)
    assert not any("gres" in line or "gpus" in line for line in lines), lines
    assert "#SBATCH --account=from-env" in lines
    assert not any("--comment" in line for line in lines)  # port 0: the job reports the port it picked
    assert "scontrol update" in script and "socket" in script
    monkeypatch.delenv("ACCOUNT")
    monkeypatch.setenv("SLURM_ACCOUNT", "slurm-env")
    assert "#SBATCH --account=slurm-env" in sbatch_lines(dry_run(capsys, "--gpus", "0"))


def test_dry_run_container_and_port(capsys):
    script = dry_run(
        capsys,
        "--container-image",
        "/images/dserve.sqsh",
        "--container-mounts",
        "/data:/data,/hf:/root/.cache/huggingface",
        "--setup",
        "module load cuda",
        "--env",
        "HF_HOME=/hf",
        "--",
        "--port",
        "9001",
        "--engine",
        "llada",
    )
    assert "#SBATCH --comment=dserve:port=9001" in sbatch_lines(script)
    assert "DSERVE_PORT=9001" in script
    assert "module load cuda\n" in script and "export HF_HOME=/hf\n" in script
    line = next(line for line in script.splitlines() if line.startswith("exec "))
    assert line.startswith(
        "exec srun --ntasks=1 --container-image=/images/dserve.sqsh --container-mounts=/data:/data,/hf:/root/.cache/huggingface dserve serve"
    )
    assert line.count("--port") == 1 and line.endswith("--engine llada")


def test_submit_rejects_bad_serve_flags(capsys):
    assert main(["slurm", "submit", "--dry-run", "--", "--no-such-flag"]) == 2
    assert "--no-such-flag" in capsys.readouterr().err
    assert main(["slurm", "submit", "--dry-run", "--port", "8000", "--", "--port", "9000"]) == 2
    assert "disagree" in capsys.readouterr().err


# --------------------------------------------------------------------------- a real cluster (slow)


@pytest.fixture(scope="module")
def slurm_env():
    if sys.platform != "linux":
        pytest.skip("the test cluster is Linux-only")
    proc = subprocess.run(["bash", str(START_CLUSTER)], capture_output=True, text=True, timeout=900)
    if proc.returncode == 3:
        pytest.skip(f"cannot run a SLURM cluster here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    conf = re.search(r"export SLURM_CONF=(\S+)", proc.stdout).group(1)
    env = {**os.environ, "SLURM_CONF": conf, "PYTHONUNBUFFERED": "1"}
    yield env
    if not os.environ.get("DSERVE_SLURM_KEEP"):
        subprocess.run(["bash", str(START_CLUSTER), "stop"], env=env, timeout=60)


def dserve(*argv: str, env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dserve", *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def squeue_state(job_id: str, env: dict) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
def test_submit_connect_and_cancel_on_a_real_cluster(slurm_env, tmp_path):
    env = slurm_env
    sub = dserve(
        "slurm",
        "submit",
        "--parsable",
        "--gpus",
        "0",
        "--port",
        "0",
        "--time",
        "00:15:00",
        "--mem",
        "2G",
        "--account",
        "dserve-test",
        "--job-name",
        "dserve-e2e",
        "--dserve-cmd",
        f"{sys.executable} -m dserve",
        "--save-script",
        str(tmp_path / "job.sh"),
        "--",
        *MODEL_ARGS,
        "--max-batch-size",
        "4",
        env=env,
        cwd=tmp_path,
    )
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    assert job_id.isdigit(), sub.stdout
    assert "--gres" not in (tmp_path / "job.sh").read_text()
    try:
        con = dserve(
            "slurm",
            "connect",
            "--job-id",
            job_id,
            "--poll-interval",
            "1",
            "--timeout",
            "240",
            "--login-host",
            "me@login.example",
            env=env,
            cwd=tmp_path,
        )
        out_file = tmp_path / f"dserve-{job_id}.out"
        job_log = out_file.read_text() if out_file.exists() else "(no output file)"
        assert con.returncode == 0, f"{con.stdout}\n{con.stderr}\njob output:\n{job_log}"
        m = re.search(r"job \d+ is RUNNING on (\S+), server port (\d+)", con.stdout)
        assert m, con.stdout
        node, port = m.group(1), int(m.group(2))
        squeue_node = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%N"], env=env, capture_output=True, text=True
        ).stdout.strip()
        assert node == squeue_node
        assert f"ssh -N -L {port}:{node}:{port} me@login.example" in con.stdout
        assert "OK: dserve on" in con.stdout
        assert f"DSERVE_PORT={port}" in job_log
        # the job's comment carries the port too (the fallback when the output file is elsewhere)
        show = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
        assert f"dserve:port={port}" in show and "Account=dserve-test" in show

        # the server the job runs answers the API (node is this machine: 127.0.0.1)
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "What is 2 plus 3?"}], max_tokens=8
        )
        assert reply.choices[0].finish_reason in ("stop", "length")

        # through "the local port": a tunnel's local end is just another address of the server
        con2 = dserve(
            "slurm",
            "connect",
            "--job-id",
            job_id,
            "--local-port",
            str(port),
            "--poll-interval",
            "1",
            "--timeout",
            "60",
            env=env,
            cwd=tmp_path,
        )
        assert con2.returncode == 0 and f"testing http://127.0.0.1:{port}/health/ready" in con2.stdout, con2.stdout + con2.stderr
    finally:
        subprocess.run(["scancel", job_id], env=env)
    deadline = time.monotonic() + 90
    while squeue_state(job_id, env) and time.monotonic() < deadline:
        time.sleep(1)
    assert not squeue_state(job_id, env), "the job did not end after scancel"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2)
    # scancel's SIGTERM reached the server (exec'd by the batch script), which shut down cleanly
    assert "Application shutdown complete" in (tmp_path / f"dserve-{job_id}.out").read_text()

    # connect on a job that ended says so
    gone = dserve("slurm", "connect", "--job-id", job_id, "--timeout", "5", env=env, cwd=tmp_path)
    assert gone.returncode == 1 and f"job {job_id} is" in gone.stderr, gone.stderr
