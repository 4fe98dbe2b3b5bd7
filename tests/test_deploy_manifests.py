"""The deployment files in deploy/ agree with the code they deploy.

Every YAML parses; every `dserve` command line in them (Kubernetes/KServe args, Compose
commands, the systemd ExecStart) is accepted by `dserve serve`'s own parser; every DSERVE_*
variable is a Settings field with a valid value; probe and scrape paths are routes of
`create_app(...)`; ports agree (args, env, containerPort, probes, Service, EXPOSE, compose
mappings); termination grace periods exceed dserve's --shutdown-grace. Docker cannot build
here (no engine): the slow test runs the Dockerfiles' install step (non-editable
`pip install . plugins/*/`) in a venv and their HEALTHCHECK command against the result.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from dserve.cli import build_parser
from dserve.server import create_app
from dserve.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cpu"]
DEFAULT_PORT = Settings.model_fields["port"].default
DEFAULT_GRACE = Settings.model_fields["shutdown_grace"].default


def load(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]


@pytest.fixture(scope="module")
def routes() -> set[str]:
    app = create_app(Settings(), load_model=False)
    return {r.path for r in app.routes}


def parse_serve(argv: list[str]) -> argparse.Namespace:
    """Parse a dserve command line (after the `dserve` program) as `dserve` would."""
    argv = list(argv)
    if not argv or argv[0].startswith("-"):
        argv = ["serve", *argv]  # `dserve --model ...` is `dserve serve --model ...`
    assert argv[0] == "serve", argv
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the bad flag
        raise AssertionError(f"dserve does not accept {shlex.join(argv)}") from exc


def settings_from(ns: argparse.Namespace, env: dict[str, str] | None = None) -> Settings:
    """The Settings a process with these flags and DSERVE_* environment would get."""
    overrides = {k: v for k, v in vars(ns).items() if k not in ("command", "handler") and v is not None}
    env_values = {}
    for key, value in (env or {}).items():
        if key.startswith("DSERVE_"):
            field = key.removeprefix("DSERVE_").lower()
            assert field in Settings.model_fields, f"{key} is not a dserve setting"
            env_values[field] = value
    return Settings.model_validate({**env_values, **overrides})


def container_env(container: dict) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def probe_port(container: dict, port) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"probe port {port!r} names no container port"
    return named[port]


def check_container(container: dict, routes: set[str]) -> Settings:
    """A dserve container: args parse, ports and probes agree, probe paths are routes."""
    ns = parse_serve(container["args"])
    settings = settings_from(ns, container_env(container))
    ports = [p["containerPort"] for p in container["ports"]]
    assert settings.port in ports, (settings.port, ports)
    env = container_env(container)
    if "DSERVE_PORT" in env:
        assert int(env["DSERVE_PORT"]) == settings.port  # the image's default and --port agree
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container[kind]["httpGet"]
        assert probe["path"] in routes, (kind, probe["path"])
        assert probe_port(container, probe["port"]) == settings.port, kind
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    return settings


# --------------------------------------------------------------------------- YAML


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs
    if path.name not in ("compose.yaml", "kustomization.yaml"):
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), path


def test_kubernetes_deployment_and_service(routes):
    docs = {d["kind"]: d for d in load("kubernetes/deployment.yaml")}
    dep, svc = docs["Deployment"], docs["Service"]
    pod = dep["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    settings = check_container(container, routes)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # graceful termination: preStop pause + drain grace fit in the pod's grace period
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    pause = int(pre_stop[1]) if pre_stop[0] == "sleep" else 0
    assert pod["spec"]["terminationGracePeriodSeconds"] > pause + settings.shutdown_grace
    assert settings.shutdown_grace == DEFAULT_GRACE
    # Prometheus scrape annotations point at the metrics route on the served port
    for ann in (pod["metadata"]["annotations"], svc["metadata"]["annotations"]):
        assert ann["prometheus.io/scrape"] == "true"
        assert int(ann["prometheus.io/port"]) == settings.port
        assert ann["prometheus.io/path"] in routes
    # the Service selects the pods and targets the served port
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = svc["spec"]["ports"]
    assert probe_port(container, port["targetPort"]) == settings.port
    # kustomization lists it
    kust = load("kubernetes/kustomization.yaml")[0]
    assert "deployment.yaml" in kust["resources"]


def test_kserve_runtime_and_inference_service(routes):
    (runtime,) = load("kserve/serving-runtime.yaml")
    (isvc,) = load("kserve/inference-service.yaml")
    assert runtime["kind"] == "ServingRuntime" and isvc["kind"] == "InferenceService"
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    settings = check_container(container, routes)
    # KServe conventions: the storage initializer's /mnt/models, HTTP on 8080
    assert settings.model == "/mnt/models" and settings.port == 8080
    args = container["args"]
    assert args[args.index("--model") + 1] == "/mnt/models" and args[args.index("--port") + 1] == "8080"
    ann = runtime["metadata"]["annotations"]
    assert int(ann["prometheus.kserve.io/port"]) == 8080 and ann["prometheus.kserve.io/path"] in routes
    # the InferenceService uses this runtime and one of its formats, as a RawDeployment
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert isvc["spec"]["predictor"]["terminationGracePeriodSeconds"] > settings.shutdown_grace


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)?", str(value))
    assert m, value
    n = int(m.group(1))
    return {"ms": n / 1000, "m": n * 60}.get(m.group(2), n)


def test_compose(routes):
    (compose,) = load("compose.yaml")
    services = compose["services"]
    assert set(services) == {"dserve", "dserve-cpu"}
    gpu, cpu = services["dserve"], services["dserve-cpu"]
    assert "profiles" not in gpu and cpu["profiles"] == ["cpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)
    expected_dockerfile = {"dserve": "deploy/Dockerfile", "dserve-cpu": "deploy/Dockerfile.cpu"}
    for name, svc in services.items():
        env = {k: str(v) for k, v in svc["environment"].items()}
        settings = settings_from(parse_serve(svc["command"]), env)
        host_port, container_port = svc["ports"][0].rsplit(":", 1)
        assert int(container_port) == settings.port, name
        assert svc["build"]["dockerfile"] == expected_dockerfile[name]
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve().is_file()
        assert svc["stop_signal"] == "SIGTERM"
        assert _seconds(svc["stop_grace_period"]) > settings.shutdown_grace, name
    assert gpu["ports"][0].split(":")[0] != cpu["ports"][0].split(":")[0]  # both can run at once


# --------------------------------------------------------------------------- Dockerfiles


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile(path, routes):
    ins = dockerfile_instructions(path)
    get = lambda word: [rest for w, rest in ins if w == word]  # noqa: E731
    assert get("ENTRYPOINT") == ['["dserve"]']
    assert get("CMD") == ['["serve"]']
    env = " ".join(get("ENV"))
    port = int(re.search(r"DSERVE_PORT=(\d+)", env).group(1))
    assert get("EXPOSE") == [str(port)] and port == DEFAULT_PORT
    (healthcheck,) = get("HEALTHCHECK")
    assert "/health/live" in healthcheck and "/health/live" in routes and "DSERVE_PORT" in healthcheck
    assert get("STOPSIGNAL") == ["SIGTERM"]
    assert get("USER") == ["dserve"]
    for copy in get("COPY"):
        *sources, _dest = copy.split()
        for src in sources:
            assert (REPO / src).exists(), f"{path.name}: COPY {src}: no such path in the repository"
    run = " ".join(get("RUN"))
    assert "pip install ." in run and "plugins/*/" in run and "dserve plugins" in run
    if path.name == "Dockerfile.cpu":
        assert "PIP_INDEX_URL=https://download.pytorch.org/whl/cpu" in run
        assert "ARG TORCH_VERSION=2.13.0" in [f"ARG {rest}" for rest in get("ARG")]
        assert get("FROM")[0].startswith("python:")
    else:
        assert re.search(r"BASE_IMAGE=\S*(pytorch|cuda)", " ".join(get("ARG")))
    ignore = path.with_name(path.name + ".dockerignore")
    assert ".git" in ignore.read_text().split()


# --------------------------------------------------------------------------- systemd


def systemd_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
        else:
            key, _, value = line.partition("=")
            sections[current].append((key.strip(), value.strip()))
    return sections


def test_systemd_unit():
    unit = systemd_unit(DEPLOY / "systemd" / "dserve.service")
    service = dict(unit["Service"])  # last value of each key
    assert service["Type"] in ("simple", "exec")
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    env = {}
    for key, value in unit["Service"]:
        if key == "Environment":
            for item in shlex.split(value):
                k, _, v = item.partition("=")
                env[k] = v
    assert any(k.startswith("DSERVE_") for k in env)
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/dserve")
    settings = settings_from(parse_serve(argv[1:]), env)
    assert _seconds(service["TimeoutStopSec"]) > settings.shutdown_grace
    assert unit["Install"] == [("WantedBy", "multi-user.target")]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path):
    """systemd's own checker, on a copy whose ExecStart is this machine's dserve."""
    dserve = shutil.which("dserve")
    if dserve is None:
        pytest.skip("no dserve executable on PATH")
    text = (DEPLOY / "systemd" / "dserve.service").read_text()
    unit = tmp_path / "dserve.service"
    unit.write_text(text.replace("/opt/dserve/venv/bin/dserve", dserve))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if "dserve.service" in line]
    assert not problems, problems


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds():
    proc = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "kubernetes")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(proc.stdout) if d]
    assert sorted(kinds) == ["Deployment", "Service"]


# --------------------------------------------------------------------------- the images' install step (slow)


@pytest.mark.slow
def test_dockerfile_install_step_and_healthcheck(tmp_path):
    """What the Dockerfiles RUN, in a venv: non-editable `pip install . plugins/*/`, `dserve
    plugins`, then `dserve serve` configured by the image's DSERVE_* ENV answers the
    HEALTHCHECK command and /health/ready."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    plugins = [str(p) for p in sorted((REPO / "plugins").glob("*/")) if (p / "pyproject.toml").exists()]
    # the build copies only these paths (and a .dockerignore'd tree): install from a copy of them
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, ctx / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*.pyc")
    shutil.copytree(REPO / "core", ctx / "core", ignore=ignore)
    shutil.copytree(REPO / "plugins", ctx / "plugins", ignore=ignore)
    plugins = [f"./plugins/{Path(p).name}/" for p in plugins]
    inst = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", ".", *plugins],
        cwd=ctx,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert inst.returncode == 0, inst.stderr[-3000:]
    where = subprocess.run(
        [str(py), "-c", "import dserve, dserve_llada; print(dserve.__file__); print(dserve_llada.EMBEDDED_MODEL_DIR)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(venv) in where.stdout.splitlines()[0], where.stdout  # the installed copy, not the work tree
    listing = subprocess.run([str(venv / "bin" / "dserve"), "plugins"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and "llada" in listing.stdout, listing.stderr

    # run it the way the image does: ENTRYPOINT dserve, CMD serve, settings from ENV
    from e2e.server import free_port

    port = free_port()
    env = {**os.environ, "DSERVE_HOST": "127.0.0.1", "DSERVE_PORT": str(port), "DSERVE_LOG_JSON": "true", "PYTHONUNBUFFERED": "1"}
    if os.environ.get("DSERVE_TEST_MODEL"):
        env["DSERVE_MODEL"] = os.environ["DSERVE_TEST_MODEL"]
    (healthcheck,) = [rest for w, rest in dockerfile_instructions(DEPLOY / "Dockerfile.cpu") if w == "HEALTHCHECK"]
    check_cmd = healthcheck.split(" CMD ", 1)[1].replace("python ", f"{py} ", 1)
    proc = subprocess.Popen(
        [str(venv / "bin" / "dserve"), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(check_cmd, shell=True, env=env, capture_output=True).returncode != 0:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the HEALTHCHECK command never passed"
            time.sleep(0.5)
        while httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).status_code != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "never ready"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully: -15 is a clean exit
    output = proc.stdout.read()
    assert proc.returncode in (0, -signal.SIGTERM), output[-3000:]
    assert "Application shutdown complete" in output, output[-3000:]
    # after the server is gone the HEALTHCHECK fails, as Docker needs
    assert subprocess.run(check_cmd, shell=True, env=env, capture_output=True).returncode != 0
