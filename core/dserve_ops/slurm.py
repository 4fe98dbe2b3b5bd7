"""SLURM helpers: `dserve slurm submit` and `dserve slurm connect`.

They wrap the same `dserve serve` command line that runs anywhere else:

    export ACCOUNT=my_account
    dserve slurm submit --gpus 8 --time 04:00:00 --mem 128G --partition batch \\
        -- --model GSAI-ML/LLaDA-8B-Instruct
    dserve slurm connect --job-id 12345

`submit` writes an sbatch script (print it with `--dry-run`), submits it with
`sbatch --parsable` and prints the job id and how to reach the server. The job writes
`DSERVE_NODE=<host>` and `DSERVE_PORT=<port>` lines to its output file, and its port to the
job's comment (`dserve:port=<port>`), so that `connect` can find the server.

`connect` waits until the job runs, finds its node (`squeue -o %N`, `scontrol show job`),
reads the port, prints the SSH tunnel command and checks `GET /health/ready`, directly on the
node or through the local end of a tunnel you already opened (`--local-port`).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dserve.cli import serve_parser

DEFAULT_PORT = 8000
DEFAULT_TIME = "04:00:00"
COMMENT_PREFIX = "dserve:port="


# --------------------------------------------------------------------------- the CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `dserve slurm submit|connect` to the dserve CLI."""
    slurm = subparsers.add_parser(
        "slurm",
        help="run dserve as a SLURM job and connect to it",
        description="Run `dserve serve` as a SLURM batch job (submit) and reach it through an SSH tunnel (connect).",
    )
    actions = slurm.add_subparsers(dest="slurm_command", metavar="ACTION")
    slurm.set_defaults(handler=lambda args: (slurm.print_help(), 2)[1])

    s = actions.add_parser(
        "submit",
        help="submit a job that runs dserve serve",
        description="Submit a SLURM batch job that runs `dserve serve`. Serve flags go after `--`.",
        epilog="example: dserve slurm submit --gpus 8 --mem 128G --time 04:00:00 -- --model GSAI-ML/LLaDA-8B-Instruct",
    )
    g = s.add_argument_group("resources")
    g.add_argument("--gpus", type=int, default=1, help="GPUs on the node (default 1; 0 requests none: a CPU job)")
    g.add_argument("--gres-name", default="gpu", help="GRES name of the GPUs (default gpu; e.g. gpu:a100)")
    g.add_argument("--cpus-per-task", type=int, help="CPU cores for the server")
    g.add_argument("--mem", help="memory on the node, e.g. 128G")
    g.add_argument("--time", default=DEFAULT_TIME, help=f"time limit (default {DEFAULT_TIME})")
    g.add_argument("--account", "-A", help="account (default: $ACCOUNT, then $SLURM_ACCOUNT)")
    g.add_argument("--partition", "-p", help="partition (default: $SLURM_PARTITION, else the cluster's default)")
    g.add_argument("--qos", help="quality of service")
    g.add_argument("--job-name", "-J", default="dserve", help="job name (default dserve)")
    g.add_argument(
        "--output", "-o", default="dserve-%j.out", help="job output file (default dserve-%%j.out in the submit directory)"
    )
    g.add_argument(
        "--sbatch-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra sbatch option, e.g. --sbatch-arg=--exclusive (repeatable)",
    )
    g = s.add_argument_group("what runs")
    g.add_argument(
        "--port", type=int, help=f"server port on the node (default {DEFAULT_PORT}; 0 picks a free port when the job starts)"
    )
    g.add_argument(
        "--container-image",
        help="container image for pyxis/enroot, e.g. /path/dserve.sqsh (runs the server with srun --container-image)",
    )
    g.add_argument("--container-mounts", help="container mounts, src:dst[,src:dst...]")
    g.add_argument("--container-workdir", help="working directory inside the container")
    g.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="CMD",
        help="shell line run before the server, e.g. 'source ~/venv/bin/activate' (repeatable)",
    )
    g.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable for the server (repeatable)"
    )
    g.add_argument("--dserve-cmd", default="dserve", help="how to start dserve on the node (default: dserve)")
    g.add_argument(
        "--drain-before-limit",
        type=int,
        default=90,
        metavar="SECONDS",
        help="SIGTERM the server this long before the time limit so it drains (default 90; 0: off)",
    )
    g = s.add_argument_group("submitting")
    g.add_argument("--login-host", help="login host for the tunnel command (default: $DSERVE_LOGIN_HOST, else this host)")
    g.add_argument("--dry-run", action="store_true", help="print the batch script, submit nothing")
    g.add_argument("--save-script", metavar="PATH", help="also write the batch script here")
    g.add_argument("--parsable", action="store_true", help="print only the job id")
    s.add_argument("serve_args", nargs=argparse.REMAINDER, help="`--` then `dserve serve` flags")
    s.set_defaults(handler=submit_command)

    c = actions.add_parser(
        "connect",
        help="find a dserve job's node, print the SSH tunnel command, test the server",
        description="Wait for a dserve SLURM job to run, find its node and port, print the SSH tunnel command and test the server's /health/ready.",
    )
    c.add_argument("--job-id", "-j", required=True, help="the job id `dserve slurm submit` printed")
    c.add_argument(
        "--local-port",
        type=int,
        help="test through this local port (the local end of a tunnel you opened); default: test the node directly",
    )
    c.add_argument("--login-host", help="login host for the tunnel command (default: $DSERVE_LOGIN_HOST, else this host)")
    c.add_argument("--port", type=int, help="server port (default: read from the job)")
    c.add_argument(
        "--timeout", type=float, default=900.0, help="seconds to wait for the job to start and the model to load (default 900)"
    )
    c.add_argument("--poll-interval", type=float, default=5.0, help="seconds between checks (default 5)")
    c.add_argument("--no-test", action="store_true", help="print the tunnel command only")
    c.set_defaults(handler=connect_command)


# --------------------------------------------------------------------------- submit


@dataclass
class JobSpec:
    serve_args: list[str]
    gpus: int = 1
    gres_name: str = "gpu"
    cpus_per_task: int | None = None
    mem: str | None = None
    time: str | None = DEFAULT_TIME
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    job_name: str = "dserve"
    output: str = "dserve-%j.out"
    port: int = DEFAULT_PORT
    container_image: str | None = None
    container_mounts: str | None = None
    container_workdir: str | None = None
    setup: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    dserve_cmd: str = "dserve"
    drain_before_limit: int = 90
    sbatch_args: list[str] = field(default_factory=list)


def split_serve_args(serve_args: list[str]) -> tuple[list[str], int | None]:
    """Validate serve flags with `dserve serve`'s own parser; return them without --port, and the port."""
    parser = serve_parser()
    try:
        ns, unknown = parser.parse_known_args(serve_args)
    except SystemExit as exc:  # argparse already printed why
        raise ValueError(f"invalid dserve serve arguments: {shlex.join(serve_args)}") from exc
    if unknown:
        raise ValueError(f"dserve serve does not accept: {shlex.join(unknown)}")
    rest: list[str] = []
    skip = False
    for tok in serve_args:
        if skip:
            skip = False
            continue
        if tok == "--port":
            skip = True
            continue
        if tok.startswith("--port="):
            continue
        rest.append(tok)
    return rest, ns.port


def serve_accepts(flag: str) -> bool:
    """Whether `dserve serve` has this flag (e.g. --gpus: a job asks for the front only then)."""
    return flag in serve_parser()._option_string_actions


def build_script(spec: JobSpec) -> str:
    """The sbatch script for a JobSpec."""
    q = shlex.quote
    lines = ["#!/bin/bash", f"#SBATCH --job-name={q(spec.job_name)}", "#SBATCH --nodes=1", "#SBATCH --ntasks=1"]
    if spec.gpus > 0:
        lines.append(f"#SBATCH --gres={spec.gres_name}:{spec.gpus}")
    if spec.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={spec.cpus_per_task}")
    if spec.mem:
        lines.append(f"#SBATCH --mem={spec.mem}")
    if spec.time:
        lines.append(f"#SBATCH --time={spec.time}")
    if spec.account:
        lines.append(f"#SBATCH --account={q(spec.account)}")
    if spec.partition:
        lines.append(f"#SBATCH --partition={q(spec.partition)}")
    if spec.qos:
        lines.append(f"#SBATCH --qos={q(spec.qos)}")
    lines.append(f"#SBATCH --output={q(spec.output)}")
    if spec.port:
        lines.append(f"#SBATCH --comment={COMMENT_PREFIX}{spec.port}")
    if spec.drain_before_limit > 0:
        # B: signal the batch shell, which is the server itself (exec below): it drains and exits
        lines.append(f"#SBATCH --signal=B:TERM@{spec.drain_before_limit}")
    for extra in spec.sbatch_args:
        lines.append(f"#SBATCH {extra}")

    serve_args = list(spec.serve_args)
    if (
        spec.gpus > 1
        and serve_accepts("--gpus")
        and "--gpus" not in serve_args
        and not any(a.startswith("--gpus=") for a in serve_args)
    ):
        serve_args = ["--gpus", str(spec.gpus), *serve_args]  # one worker per GPU of the allocation

    lines += [
        "",
        "# generated by `dserve slurm submit`",
        "set -eo pipefail",
    ]
    for k, v in spec.env.items():
        lines.append(f"export {k}={q(v)}")
    lines += spec.setup
    if spec.port:
        lines.append(f"DSERVE_PORT={spec.port}")
    else:
        lines += [
            "DSERVE_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind((\"\", 0)); print(s.getsockname()[1])')",
            f'scontrol update JobId="$SLURM_JOB_ID" Comment="{COMMENT_PREFIX}$DSERVE_PORT" 2>/dev/null || true',
        ]
    lines += [
        "DSERVE_NODE=$(hostname)",
        'echo "DSERVE_NODE=$DSERVE_NODE"',
        'echo "DSERVE_PORT=$DSERVE_PORT"',
        'echo "dserve: job $SLURM_JOB_ID serves on http://$DSERVE_NODE:$DSERVE_PORT"',
        'echo "dserve: from your machine: ssh -N -L $DSERVE_PORT:$DSERVE_NODE:$DSERVE_PORT ${USER:-$(id -un)}@${SLURM_SUBMIT_HOST:-<login-host>}"',
        'echo "dserve: then: curl http://localhost:$DSERVE_PORT/health/ready   (or: dserve slurm connect --job-id $SLURM_JOB_ID)"',
    ]
    serve = f'{spec.dserve_cmd} serve --host 0.0.0.0 --port "$DSERVE_PORT"'
    if serve_args:
        serve += " " + shlex.join(serve_args)
    if spec.container_image:
        srun = ["srun", "--ntasks=1", f"--container-image={spec.container_image}"]
        if spec.container_mounts:
            srun.append(f"--container-mounts={spec.container_mounts}")
        if spec.container_workdir:
            srun.append(f"--container-workdir={spec.container_workdir}")
        lines.append(f"exec {shlex.join(srun)} {serve}")
    else:
        lines.append(f"exec {serve}")
    return "\n".join(lines) + "\n"


def _default_login_host(explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.environ.get("DSERVE_LOGIN_HOST"):
        return os.environ["DSERVE_LOGIN_HOST"]
    try:
        import getpass

        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in the environment or passwd
        user = "user"
    host = socket.getfqdn()
    if host in ("localhost", "localhost.localdomain") or host.startswith("localhost"):
        host = socket.gethostname()
    return f"{user}@{host}"


def tunnel_command(node: str, port: int, login_host: str, local_port: int | None = None) -> str:
    return f"ssh -N -L {local_port or port}:{node}:{port} {login_host}"


def submit_command(args: argparse.Namespace) -> int:
    serve_args = list(args.serve_args or [])
    if serve_args and serve_args[0] == "--":
        serve_args = serve_args[1:]
    try:
        serve_args, serve_port = split_serve_args(serve_args)
    except ValueError as exc:
        print(f"dserve slurm submit: {exc}", file=sys.stderr)
        return 2
    if args.port is not None and serve_port is not None and args.port != serve_port:
        print(f"dserve slurm submit: --port {args.port} and the serve flag --port {serve_port} disagree", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else (serve_port if serve_port is not None else DEFAULT_PORT)
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            print(f"dserve slurm submit: --env wants KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        env[key] = value
    if args.gpus < 0:
        print("dserve slurm submit: --gpus must be >= 0", file=sys.stderr)
        return 2
    spec = JobSpec(
        serve_args=serve_args,
        gpus=args.gpus,
        gres_name=args.gres_name,
        cpus_per_task=args.cpus_per_task,
        mem=args.mem,
        time=args.time,
        account=args.account or os.environ.get("ACCOUNT") or os.environ.get("SLURM_ACCOUNT"),
        partition=args.partition or os.environ.get("SLURM_PARTITION"),
        qos=args.qos,
        job_name=args.job_name,
        output=args.output,
        port=port,
        container_image=args.container_image,
        container_mounts=args.container_mounts,
        container_workdir=args.container_workdir,
        setup=args.setup,
        env=env,
        dserve_cmd=args.dserve_cmd,
        drain_before_limit=args.drain_before_limit,
        sbatch_args=args.sbatch_arg,
    )
    script = build_script(spec)
    if args.save_script:
        Path(args.save_script).write_text(script)
    if args.dry_run:
        sys.stdout.write(script)
        return 0
    if shutil.which("sbatch") is None:
        print("dserve slurm submit: sbatch not found: run this on a SLURM login node (or use --dry-run)", file=sys.stderr)
        return 1
    proc = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"dserve slurm submit: sbatch failed ({proc.returncode}): {proc.stderr.strip()}", file=sys.stderr)
        return 1
    job_id = proc.stdout.strip().split(";")[0]
    if args.parsable:
        print(job_id)
        return 0
    login = _default_login_host(args.login_host)
    port_text = str(port) if port else "<port>"
    print(f"Submitted dserve job {job_id}")
    print(f"  output:  {spec.output.replace('%j', job_id).replace('%x', spec.job_name)}")
    print(f"  status:  squeue -j {job_id}")
    print(f"  connect: dserve slurm connect --job-id {job_id}   (waits, finds the node, prints the tunnel, tests it)")
    print(f"  tunnel:  ssh -N -L {port_text}:<node>:{port_text} {login}   (<node>: squeue -h -j {job_id} -o %N)")
    print(f"  cancel:  scancel {job_id}")
    return 0


# --------------------------------------------------------------------------- connect


def _run(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (empty when the job is unknown)."""
    out = _run(["scontrol", "show", "job", str(job_id)])
    fields: dict[str, str] = {}
    if not out:
        return fields
    for line in out.splitlines():
        line = line.strip()
        # keys are words followed by '='; values run to the next " Key=" (some hold spaces)
        for m in re.finditer(r"(\w[\w:/]*)=(.*?)(?=\s+\w[\w:/]*=|$)", line):
            fields.setdefault(m.group(1), m.group(2))
    return fields


def job_state(job_id: str) -> tuple[str | None, str]:
    """(state, reason) from squeue; (None, '') when the queue no longer has the job."""
    out = _run(["squeue", "-h", "-j", str(job_id), "-o", "%T|%r"])
    if out and out.strip():
        state, _, reason = out.strip().splitlines()[0].partition("|")
        return state.strip(), reason.strip()
    fields = job_fields(job_id)
    if fields.get("JobState"):
        return fields["JobState"], fields.get("Reason", "")
    return None, ""


def job_node(job_id: str) -> str | None:
    out = _run(["squeue", "-h", "-j", str(job_id), "-o", "%N"])
    nodelist = (out or "").strip() or job_fields(job_id).get("NodeList", "")
    if not nodelist or nodelist in ("(null)", "None"):
        return None
    expanded = _run(["scontrol", "show", "hostnames", nodelist])
    if expanded and expanded.split():
        return expanded.split()[0]
    return nodelist.split(",")[0]


def _output_path(job_id: str, fields: dict[str, str]) -> Path | None:
    path = fields.get("StdOut")
    if not path:
        return None
    subs = {
        "%j": str(job_id),
        "%A": str(job_id),
        "%x": fields.get("JobName", ""),
        "%u": fields.get("UserId", "").split("(")[0],
        "%N": fields.get("BatchHost", ""),
    }
    for k, v in subs.items():
        path = path.replace(k, v)
    if not os.path.isabs(path) and fields.get("WorkDir"):
        path = os.path.join(fields["WorkDir"], path)
    return Path(path)


def job_endpoint(job_id: str) -> tuple[str | None, int | None]:
    """(node, port) the job reported in its output file, else its comment."""
    fields = job_fields(job_id)
    node = port = None
    out = _output_path(job_id, fields)
    if out is not None:
        try:
            text = out.read_text(errors="replace")
        except OSError:
            text = ""
        if m := re.search(r"^DSERVE_NODE=(\S+)", text, re.M):
            node = m.group(1)
        if m := re.search(r"^DSERVE_PORT=(\d+)", text, re.M):
            port = int(m.group(1))
    if port is None:
        comment = fields.get("Comment", "")
        if m := re.search(re.escape(COMMENT_PREFIX) + r"(\d+)", comment):
            port = int(m.group(1))
    return node, port


def check_ready(url: str, timeout: float = 5.0) -> tuple[bool | None, str]:
    """(True, _) ready; (False, why) not yet; (None, why) never will be (the model failed to load)."""
    import httpx

    try:
        r = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return False, f"no answer ({type(exc).__name__}: {exc})"
    if r.status_code == 200:
        return True, "ready"
    try:  # /health says why: loading, draining or error (with the load error)
        health = httpx.get(url.rsplit("/ready", 1)[0], timeout=timeout).json()
    except (httpx.HTTPError, ValueError):
        health = {}
    if health.get("status") == "error":
        return None, f"the server is up but its model failed to load: {health.get('error')}"
    if health.get("status"):
        return False, f"HTTP {r.status_code}, server status {health['status']}"
    return False, f"HTTP {r.status_code} {r.text.strip()[:200]}"


def connect_command(args: argparse.Namespace) -> int:
    job_id = str(args.job_id)
    if shutil.which("squeue") is None:
        print("dserve slurm connect: squeue not found: run this on a SLURM login node", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    last = None
    while True:
        state, reason = job_state(job_id)
        if state is None:
            print(
                f"dserve slurm connect: job {job_id} is not in the queue (finished, cancelled or never existed)", file=sys.stderr
            )
            return 1
        if state == "RUNNING":
            break
        if state not in ("PENDING", "CONFIGURING", "REQUEUED", "RESIZING"):
            print(f"dserve slurm connect: job {job_id} is {state} {reason}".rstrip(), file=sys.stderr)
            return 1
        if (state, reason) != last:
            print(f"job {job_id}: {state} ({reason or 'no reason given'}), waiting...", flush=True)
            last = (state, reason)
        if time.monotonic() > deadline:
            print(f"dserve slurm connect: job {job_id} still {state} after {args.timeout:.0f}s", file=sys.stderr)
            return 1
        time.sleep(args.poll_interval)

    node = job_node(job_id)
    reported_node, port = job_endpoint(job_id)
    while port is None and args.port is None and time.monotonic() < deadline:
        time.sleep(min(args.poll_interval, 1.0))  # the job writes its port as it starts
        reported_node, port = job_endpoint(job_id)
    if args.port is not None:
        port = args.port
    if port is None:
        port = DEFAULT_PORT
        print(f"warning: job {job_id} reported no port; assuming {port}", file=sys.stderr)
    node = node or reported_node
    if node is None:
        print(f"dserve slurm connect: could not find the node of job {job_id}", file=sys.stderr)
        return 1
    login = _default_login_host(args.login_host)
    local = args.local_port or port
    print(f"job {job_id} is RUNNING on {node}, server port {port}")
    print("SSH tunnel (run on your machine):")
    print(f"  {tunnel_command(node, port, login, local)}")
    print(f"then: curl http://localhost:{local}/health/ready")
    print(f"      export OPENAI_BASE_URL=http://localhost:{local}/v1")
    if args.no_test:
        return 0

    url = f"http://127.0.0.1:{args.local_port}/health/ready" if args.local_port else f"http://{node}:{port}/health/ready"
    print(f"testing {url} ...", flush=True)
    last_msg = None
    while True:
        ok, msg = check_ready(url)
        if ok:
            print(f"OK: dserve on {node}:{port} is ready ({url})")
            return 0
        if ok is None:
            print(f"FAILED: {msg}", file=sys.stderr)
            return 1
        state, _ = job_state(job_id)
        if state != "RUNNING":
            print(f"FAILED: job {job_id} is {state or 'gone'}; last check: {msg}", file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            print(f"FAILED: {url} not ready after {args.timeout:.0f}s: {msg}", file=sys.stderr)
            if not args.local_port and msg.startswith("no answer"):
                print(
                    "  (if compute nodes cannot be reached from here: open the tunnel above, then rerun with --local-port)",
                    file=sys.stderr,
                )
            return 1
        if msg != last_msg:
            print(f"  not ready yet: {msg}", flush=True)
            last_msg = msg
        time.sleep(args.poll_interval)
