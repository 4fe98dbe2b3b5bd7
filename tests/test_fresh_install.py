"""A fresh install of the core and of each extra imports cleanly (slow: pip installs from PyPI).

Each case makes a new virtual environment without the system's site-packages, lends it only
torch and what torch itself requires (symlinked from this interpreter, so a multi-gigabyte wheel
is not downloaded again), then `pip install -c constraints/test.txt '.[extra]'` and imports
what the extra is for. A package the code imports but pyproject.toml does not declare is then
simply absent, and the import fails. `tests/unit/test_declared_dependencies.py` is the fast,
static form of the same check.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

CORE_IMPORTS = (
    "import dserve, dserve.server, dserve.cli, dserve.hub, dserve.llm, dserve.progress, dserve.routes.table;"
    "from dserve.routes.docs import swagger_dir; assert swagger_dir() is not None, 'swagger-ui-py files';"
    "import dserve_ops.plugin, dserve_ops.bench, dserve_ops.front.app;"
    "from dserve import LLM"
)
EXTRAS = {
    "": CORE_IMPORTS,
    "plot": CORE_IMPORTS + "; import matplotlib.pyplot",
    "quant": CORE_IMPORTS + "; import torchao.quantization",
    "ray": CORE_IMPORTS + "; import ray.serve, dserve_ops.ray_serve",
    "test": CORE_IMPORTS + "; import pytest, pytest_timeout, openai, yaml, schemathesis, torchao",
    "clients": CORE_IMPORTS + "; import lm_eval, lm_eval.models.openai_completions, litellm",
}


def _requirement_names(dist: importlib.metadata.Distribution) -> list[str]:
    out = []
    for req in dist.requires or []:
        if "extra ==" in req:
            continue
        out.append(re.split(r"[\s<>=!~\[;(]", req, maxsplit=1)[0])
    return out


def _lend_torch(folder: Path) -> None:
    """Symlink torch and its own requirements (packages and dist-info) into `folder`."""
    folder.mkdir()
    todo, seen = ["torch"], set()
    while todo:
        name = todo.pop()
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # e.g. CUDA wheels a CPU build does not have
        key = dist.metadata["Name"].lower()
        if key in seen:
            continue
        seen.add(key)
        todo.extend(_requirement_names(dist))
        base = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source, target = base / top, folder / top
            if source.exists() and not target.exists() and not top.endswith(".pth") and top != "__pycache__":
                target.symlink_to(source)


@pytest.mark.parametrize("extra", list(EXTRAS), ids=[e or "core" for e in EXTRAS])
def test_fresh_install_imports(extra, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    _lend_torch(tmp_path / "lent")
    (site / "lent-torch.pth").write_text(str(tmp_path / "lent") + "\n")
    target = f"{ROOT}[{extra}]" if extra else str(ROOT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-c",
            str(ROOT / "constraints" / "test.txt"),
            target,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    run = subprocess.run([str(python), "-c", EXTRAS[extra]], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
