"""`--model ORG/NAME`: the checkpoint from the Hugging Face Hub, through huggingface_hub.

Only what serving reads is downloaded (config, safetensors weights and their index, tokenizer
and chat template files), never a repository's other weights formats (`*.bin`, `*.pth`, GGUF)
or its extras. huggingface_hub does the rest and its conventions hold: the cache
(`HF_HOME` / `HF_HUB_CACHE`, or `--download-dir`), `HF_TOKEN` for gated and private
repositories, `HF_ENDPOINT` for a mirror, `HF_HUB_OFFLINE=1` for the cache alone. A file whose
connection drops is resumed from where it stopped (huggingface_hub retries within the run; a
run that still fails leaves the partial file, and the next run resumes it).

Progress: a bar on a terminal, log lines elsewhere (dserve.progress).
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

log = structlog.get_logger("dserve.hub")

# What a checkpoint directory needs for serving (modeling/loading.py, modeling/tokenizer.py).
SERVING_FILES = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.tiktoken",
    "chat_template.json",
    "chat_template.jinja",
]


class HubError(RuntimeError):
    """The model cannot be had from the Hub; the message says why and what to do."""


def looks_like_repo_id(name: str) -> bool:
    """ORG/NAME or NAME, as the Hub spells repository ids (not a filesystem path)."""
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
        return False
    return all(part and all(c.isalnum() or c in "-_." for c in part) for part in name.split("/"))


def checkpoint_dir(name_or_path: str | os.PathLike, *, revision: str | None = None, download_dir: str | None = None) -> Path:
    """A local checkpoint directory: `name_or_path` itself, or the Hub repository's files
    (downloaded into the cache, or found there)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if not looks_like_repo_id(name):
        raise FileNotFoundError(f"model {name!r} is neither a directory nor a Hugging Face repo id (ORG/NAME)")
    return download(name, revision=revision, download_dir=download_dir)


def download(repo_id: str, *, revision: str | None = None, download_dir: str | None = None) -> Path:
    """The serving files of `repo_id` at `revision` (default: main), in the local cache."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from dserve.progress import ProgressBar

    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    offline = bool(constants.HF_HUB_OFFLINE)
    log.info("model from the Hugging Face Hub", repo=repo_id, revision=revision or "main", endpoint=constants.ENDPOINT,
             cache=download_dir or constants.HF_HUB_CACHE, offline=offline)  # fmt: skip
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=download_dir,
            allow_patterns=SERVING_FILES,
            tqdm_class=ProgressBar,
        )
    except GatedRepoError:
        raise HubError(
            f"{where} is gated: accept its terms on the Hub with your account, then set HF_TOKEN to a token of that account"
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"{repo_id} has no revision {revision!r} (a branch, tag or commit)") from None
    except RepositoryNotFoundError:
        token = "HF_TOKEN is set but does not give access" if _token_set() else "for a private repo, set HF_TOKEN"
        raise HubError(f"{where} was not found on {constants.ENDPOINT}: check the name; {token}") from None
    except LocalEntryNotFoundError as exc:
        if offline:
            raise HubError(
                f"{where} is not in the local cache ({download_dir or constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 "
                "forbids downloading it"
            ) from None
        raise HubError(f"{where}: could not reach {constants.ENDPOINT} and the cache has no copy ({_cause(exc)})") from None
    except HfHubHTTPError as exc:
        raise HubError(f"{where}: the Hub answered {_cause(exc)}; run again to resume the download") from None
    except Exception as exc:  # noqa: BLE001 - a dropped connection, a full disk: the download stopped
        raise HubError(
            f"{where}: the download failed ({type(exc).__name__}: {exc}); run again to resume it "
            "(finished files are kept, a partial one continues where it stopped)"
        ) from None
    path = Path(folder)
    if not (path / "config.json").exists():
        raise HubError(f"{where} has no config.json: not a Transformers-style checkpoint")
    if not any(path.glob("*.safetensors")):
        raise HubError(f"{where} has no safetensors weights (dserve loads safetensors only, never pickled *.bin)")
    log.info("model files ready", repo=repo_id, path=str(path))
    return path


def _token_set() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__ or exc
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
