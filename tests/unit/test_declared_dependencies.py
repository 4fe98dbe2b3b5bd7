"""Every third-party package the core distribution imports is declared in pyproject.toml: in
`dependencies`, or in the extra that the importing feature documents (an import another package
happens to bring along is not a declaration). `tests/test_fresh_install.py` (slow) installs each
extra into a fresh environment and imports it."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FIRST_PARTY = re.compile(r"^dserve(_\w+)?$")

# imports that only an optional feature makes: module -> the extra that installs it
OPTIONAL = {"matplotlib": "plot", "torchao": "quant", "ray": "ray", "lm_eval": "lm-eval", "datasets": "lm-eval"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def imported_modules() -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere in core/ -> the files importing them."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or FIRST_PARTY.match(top) or top == "__future__":
                    continue
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_import_is_declared():
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = {extra: {_name(r) for r in reqs} for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items()}
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, files in sorted(imported_modules().items()):
        if module in OPTIONAL:
            extra = OPTIONAL[module]
            dist = module.replace("_", "-")
            assert dist in extras.get(extra, set()) or any(dist in r for r in extras.get(extra, set())), (module, extra)
            continue
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not dists & declared:
            missing.append(f"{module} (from {', '.join(sorted(files))})")
    assert not missing, "imported but not declared in [project] dependencies: " + "; ".join(missing)


def test_the_torch_floor_has_what_the_code_calls():
    floor = next(r for r in PYPROJECT["project"]["dependencies"] if _name(r) == "torch")
    version = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", floor).group(1).split(".")[:2])
    uses_gqa = any("enable_gqa" in p.read_text() for p in (ROOT / "core").rglob("*.py"))
    assert not uses_gqa or version >= (2, 5), f"scaled_dot_product_attention(enable_gqa=) needs torch 2.5; the floor is {floor}"
