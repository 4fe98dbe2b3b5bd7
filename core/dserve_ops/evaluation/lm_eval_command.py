"""`dserve lm-eval ARGS...`: lm-evaluation-harness's own CLI with the `dserve` model registered
and dserve's task YAMLs (the embedded task family) on its include path."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="arguments for lm-eval (e.g. --model dserve --tasks ...)")


def main(args: argparse.Namespace) -> int:
    try:
        from lm_eval.__main__ import cli_evaluate

        import dserve_ops.evaluation.lm_eval_model  # noqa: F401  (registers the `dserve` model)
    except ImportError as exc:
        print(f"dserve lm-eval needs lm-evaluation-harness: pip install 'dserve[lm-eval]' ({exc})", file=sys.stderr)
        return 2
    rest = list(args.lm_eval_args)
    if "--include_path" not in rest:
        rest += ["--include_path", str(TASKS_DIR)]
    sys.argv = ["lm-eval", *rest]
    cli_evaluate()
    return 0
