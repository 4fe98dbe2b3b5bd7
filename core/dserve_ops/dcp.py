"""NeMo-RL DCP checkpoints -> Hugging Face directories dserve loads.

NeMo-RL saves policy weights with ``torch.distributed.checkpoint`` (DCP) as
``dcp.save({"model": ModelState(model)}, checkpoint_id=.../policy/weights)``. DCP flattens
that nested dict, so every tensor is stored under ``"model." + <the module's FQN>``: for an
HF LLaDA model ``model.model.transformer.blocks.0.q_proj.weight``. Wrapped models add
wrapper segments to the FQN (``_orig_mod.`` for torch.compile, ``_fsdp_wrapped_module.`` /
``_checkpoint_wrapped_module.`` for FSDP1 and activation checkpointing, ``module.`` for DDP).
A NeMo-RL step directory looks like::

    step_10/policy/weights/{.metadata, __0_0.distcp, ...}
    step_10/policy/tokenizer/{tokenizer.json, ...}     (newer releases)
    step_10/policy/optimizer/...                         (ignored)

``convert`` reads the checkpoint on the CPU without a process group (``dcp.load`` with
``no_dist``), a shard at a time, maps the names onto the base model's safetensors names
(wrapper segments dropped, then the one leading prefix that makes the names match, found
from the names themselves), checks every name and shape against the base model, and writes
``config.json`` (the base model's), the tokenizer files (the checkpoint's own ``tokenizer/``
when NeMo-RL saved one, else the base model's) and ``model.safetensors`` (sharded with an
index above ``--max-shard-size``). Names must match exactly: a missing or unexpected tensor
is an error that lists them.

``ensure_converted`` is what ``dserve serve --dcp-path P --base-model M`` uses: the
conversion is kept in a cache directory named by a content hash of the DCP directory
(``.metadata`` hashed in full, every file's name, size and mtime) and of the base model's
config, tokenizer files and parameter names, so the second start reuses it. A file lock
makes concurrent starts (several fronts, a SLURM array) convert once.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("dserve.dcp")

FORMAT_VERSION = 1  # part of the cache key: bump when the output of a conversion changes
MARKER = "dserve_conversion.json"  # written last: a directory without it is incomplete
WRAPPER_SEGMENTS = ("_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".distcp")
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


class ConversionError(ValueError):
    """The DCP checkpoint does not fit the base model (or is not a DCP checkpoint)."""


# --------------------------------------------------------------------------- locating things


def resolve_dcp_dir(path: str | os.PathLike) -> Path:
    """The directory holding ``.metadata``: the path itself, or NeMo-RL's ``weights/`` or
    ``policy/weights/`` below a step directory."""
    root = Path(path).expanduser()
    for candidate in (root, root / "weights", root / "policy" / "weights"):
        if (candidate / ".metadata").is_file():
            return candidate
    raise ConversionError(
        f"{root} is not a torch.distributed.checkpoint directory: no .metadata in it, in weights/ or in policy/weights/"
    )


def tokenizer_source(dcp_dir: Path, base_dir: Path) -> Path:
    """NeMo-RL's saved tokenizer (``policy/tokenizer`` next to ``policy/weights``) when there
    is one, since training may have changed it; else the base model's."""
    sibling = dcp_dir.parent / "tokenizer"
    if sibling.is_dir() and any(sibling.iterdir()):
        return sibling
    return base_dir


def _aux_files(directory: Path) -> list[Path]:
    """Files copied next to the weights: tokenizer, generation config, chat template, ...
    (everything but config.json, weights, indexes and our own marker)."""
    out = []
    for f in sorted(directory.iterdir()):
        if not f.is_file() or f.name in ("config.json", MARKER) or f.name.startswith("."):
            continue
        if f.name.endswith(WEIGHT_SUFFIXES) or f.name.endswith(".index.json"):
            continue
        out.append(f)
    return out


def base_parameters(base_dir: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype name) of every tensor in the base checkpoint (headers only)."""
    from safetensors import safe_open

    from dserve.modeling.loading import weight_files

    params: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in weight_files(base_dir):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                params[name] = (tuple(sl.get_shape()), _SAFETENSORS_DTYPES.get(sl.get_dtype(), sl.get_dtype()))
    if not params:
        raise ConversionError(f"the base model {base_dir} has no safetensors weights")
    return params


# --------------------------------------------------------------------------- names


def _strip_wrappers(key: str) -> str:
    for seg in WRAPPER_SEGMENTS:
        key = key.replace(seg, "")
    return key


@dataclass
class NameMap:
    mapping: dict[str, str]  # base name -> DCP key
    prefix: str  # the prefix dropped from every (unwrapped) DCP key
    ignored: list[str]  # DCP keys dropped on purpose (tied output head)


def map_names(dcp_keys: list[str], base_names: set[str], *, tied: bool = False) -> NameMap:
    """Map DCP keys onto base names: drop wrapper segments, then one common prefix.

    The prefix is the one (among the keys' leading dotted components, and none) under which
    the most keys name a base parameter; NeMo-RL's is ``model.``. Every base name must be
    covered and every DCP key used, except a tied output head the base checkpoint omits.
    """
    unwrapped = {k: _strip_wrappers(k) for k in dcp_keys}
    prefixes = {""}
    for name in unwrapped.values():
        parts = name.split(".")
        for i in range(1, min(len(parts), 4)):
            prefixes.add(".".join(parts[:i]) + ".")

    def hits(prefix: str) -> int:
        return sum(1 for n in unwrapped.values() if n.startswith(prefix) and n[len(prefix) :] in base_names)

    prefix = max(sorted(prefixes, key=len), key=hits)  # ties: the shortest prefix
    mapping: dict[str, str] = {}
    unexpected, ignored, duplicate = [], [], []
    for key in sorted(dcp_keys):
        name = unwrapped[key]
        target = name[len(prefix) :] if name.startswith(prefix) else None
        if target in base_names:
            if target in mapping:
                duplicate.append(key)
            mapping[target] = key
        elif tied and name.endswith(("lm_head.weight", "transformer.ff_out.weight")):
            ignored.append(key)
        else:
            unexpected.append(key)
    missing = sorted(base_names - set(mapping))
    if missing or unexpected or duplicate:
        detail = []
        if missing:
            detail.append(f"{len(missing)} base parameter(s) not in the checkpoint, e.g. {missing[:5]}")
        if unexpected:
            detail.append(f"{len(unexpected)} checkpoint tensor(s) with no base parameter, e.g. {unexpected[:5]}")
        if duplicate:
            detail.append(f"several checkpoint tensors map to one name: {duplicate[:5]}")
        raise ConversionError(
            f"the DCP checkpoint does not match the base model (dropped prefix {prefix!r}, wrapper "
            f"segments {list(WRAPPER_SEGMENTS)}): " + "; ".join(detail)
        )
    return NameMap(mapping, prefix, ignored)


# --------------------------------------------------------------------------- conversion


def _dtype(name: str):
    import torch

    from dserve.modeling.loading import DTYPES

    if name in DTYPES:
        return DTYPES[name]
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ConversionError(f"unknown dtype {name!r}")
    return value


def _read_metadata(dcp_dir: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(str(dcp_dir)).read_metadata()
    tensors = {k: md for k, md in metadata.state_dict_metadata.items() if isinstance(md, TensorStorageMetadata)}
    if not tensors:
        raise ConversionError(f"{dcp_dir}: the checkpoint holds no tensors")
    return tensors, len(metadata.state_dict_metadata) - len(tensors)


def convert(
    dcp_path: str | os.PathLike,
    base_model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    dtype: str = "base",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Convert a DCP checkpoint into a Hugging Face directory at `output` and return it.

    dtype: ``base`` (each tensor in its dtype in the base checkpoint), ``keep`` (as stored
    in the DCP checkpoint), or a dtype name (``bfloat16``, ``float32``, ...).
    """
    import torch
    import torch.distributed.checkpoint as dist_cp
    from safetensors.torch import save_file
    from torch.distributed.checkpoint import FileSystemReader

    from dserve.modeling.loading import read_config, resolve_checkpoint_dir

    started = time.monotonic()
    dcp_dir = resolve_dcp_dir(dcp_path)
    base_dir = resolve_checkpoint_dir(base_model)
    output = Path(output).expanduser()
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{output} exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(output)

    config = read_config(base_dir)
    params = base_parameters(base_dir)
    tensors, skipped = _read_metadata(dcp_dir)
    tied = bool(config.get("tie_word_embeddings") or config.get("weight_tying"))
    names = map_names(list(tensors), set(params), tied=tied)
    bad_shapes = [
        f"{n}: checkpoint {tuple(tensors[k].size)} != base {params[n][0]}"
        for n, k in names.mapping.items()
        if tuple(tensors[k].size) != params[n][0]
    ]
    if bad_shapes:
        raise ConversionError(f"{len(bad_shapes)} shape mismatch(es): {bad_shapes[:5]}")

    def out_dtype(name: str):
        if dtype == "base":
            return _dtype(params[name][1])
        if dtype == "keep":
            return tensors[names.mapping[name]].properties.dtype
        return _dtype(dtype)

    # shards of whole tensors, in the base checkpoint's order, each at most max_shard_bytes
    shards: list[list[str]] = [[]]
    size = 0
    total = 0
    for name in params:
        nbytes = _numel(params[name][0]) * torch.empty((), dtype=out_dtype(name)).element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
        total += nbytes

    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        reader = FileSystemReader(str(dcp_dir))
        files = (
            ["model.safetensors"]
            if len(shards) == 1
            else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        )
        weight_map = {}
        for shard, file in zip(shards, files):
            state = {
                names.mapping[n]: torch.empty(
                    tuple(tensors[names.mapping[n]].size), dtype=tensors[names.mapping[n]].properties.dtype
                )
                for n in shard
            }
            with _quiet_single_process_warning():
                dist_cp.load(state, storage_reader=reader, no_dist=True)
            out = {n: state.pop(names.mapping[n]).to(out_dtype(n)).contiguous() for n in shard}
            save_file(out, str(tmp / file), metadata={"format": "pt"})
            weight_map.update({n: file for n in shard})
            del out, state
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

        new_config = dict(config)
        if dtype not in ("base",):
            dtypes = {str(out_dtype(n)).removeprefix("torch.") for n in params}
            if len(dtypes) == 1:
                new_config["torch_dtype"] = dtypes.pop()
        (tmp / "config.json").write_text(json.dumps(new_config, indent=2) + "\n")
        tok_dir = tokenizer_source(dcp_dir, base_dir)
        for f in _aux_files(tok_dir) + ([] if tok_dir == base_dir else _aux_files(base_dir)):
            if not (tmp / f.name).exists():  # the checkpoint's own tokenizer files win
                shutil.copy2(f, tmp / f.name)
        provenance = {
            "format_version": FORMAT_VERSION,
            "dcp_path": str(dcp_dir.resolve()),
            "base_model": str(base_model),
            "base_dir": str(base_dir.resolve()),
            "tokenizer_from": str(tok_dir.resolve()),
            "dropped_prefix": names.prefix,
            "ignored_tensors": names.ignored,
            "non_tensor_entries_skipped": skipped,
            "dtype": dtype,
            "tensors": len(names.mapping),
            "bytes": total,
            "shards": len(shards),
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / MARKER).write_text(json.dumps(provenance, indent=2) + "\n")
        if output.exists():
            output.rmdir()  # empty (checked above)
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "dcp checkpoint converted",
        dcp_path=str(dcp_dir),
        output=str(output),
        tensors=len(names.mapping),
        shards=len(shards),
        gigabytes=round(total / 1e9, 3),
        dropped_prefix=names.prefix,
        seconds=round(time.monotonic() - started, 2),
    )
    return output


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@contextlib.contextmanager
def _quiet_single_process_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (load|save) in a single process.*")
        yield


# --------------------------------------------------------------------------- the cache


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "dserve" / "dcp"


def cache_key(dcp_dir: Path, base_dir: Path, dtype: str) -> str:
    """Content hash: the DCP directory (``.metadata`` in full; every file's relative name,
    size and mtime), the base model's config, copied files and parameter names/shapes, the
    tokenizer source, the dtype and the converter's format version."""
    h = hashlib.sha256()
    h.update(f"dserve-dcp-v{FORMAT_VERSION}\0{dtype}\0".encode())
    h.update((dcp_dir / ".metadata").read_bytes())
    for f in sorted(p for p in dcp_dir.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(dcp_dir)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    h.update((base_dir / "config.json").read_bytes())
    for name, (shape, dt) in sorted(base_parameters(base_dir).items()):
        h.update(f"{name}\0{shape}\0{dt}\0".encode())
    tok_dir = tokenizer_source(dcp_dir, base_dir)
    for f in _aux_files(tok_dir) + ([] if tok_dir == base_dir else _aux_files(base_dir)):
        h.update(f.name.encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process lock
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_converted(
    dcp_path: str | os.PathLike,
    base_model: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    dtype: str = "base",
) -> Path:
    """The converted Hugging Face directory for (dcp_path, base_model), converting once."""
    from dserve.modeling.loading import resolve_checkpoint_dir

    dcp_dir = resolve_dcp_dir(dcp_path)
    base_dir = resolve_checkpoint_dir(base_model)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    key = cache_key(dcp_dir, base_dir, dtype)
    target = root / f"{_slug(dcp_dir)}-{key[:16]}"
    with _file_lock(root / f".{key[:16]}.lock"):
        if (target / MARKER).is_file():
            log.info("dcp conversion cached", dcp_path=str(dcp_dir), model_dir=str(target), cache_key=key[:16])
            return target
        if target.exists():  # an interrupted conversion
            shutil.rmtree(target)
        log.info(
            "converting dcp checkpoint",
            dcp_path=str(dcp_dir),
            base_model=str(base_model),
            model_dir=str(target),
            cache_key=key[:16],
        )
        return convert(dcp_dir, base_dir, target, dtype=dtype)


def served_name(dcp_path: str | os.PathLike) -> str:
    """A model id for a DCP checkpoint: its directory name, skipping NeMo-RL's generic
    ``weights`` / ``policy`` components (``results/sft/step_10/policy/weights`` -> ``step_10``)."""
    path = Path(dcp_path).expanduser().resolve()
    for part in (path, *path.parents):
        if part.name and part.name not in ("weights", "policy"):
            return part.name
    return path.name or "dcp-checkpoint"


def _slug(dcp_dir: Path) -> str:
    name = served_name(dcp_dir)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:48] or "dcp"


def prepare_settings(settings):
    """`dserve serve --dcp-path P --base-model M`: convert (or reuse) before any worker
    starts, then serve the converted directory under the checkpoint's name."""
    if not settings.base_model:
        raise ConversionError("--dcp-path needs --base-model (the Hugging Face model the checkpoint was trained from)")
    if settings.model:
        raise ConversionError("give either --model or --dcp-path, not both")
    model_dir = ensure_converted(settings.dcp_path, settings.base_model, cache_dir=settings.dcp_cache_dir)
    return settings.model_copy(
        update={
            "model": str(model_dir),
            "served_model_name": settings.served_model_name or served_name(settings.dcp_path),
            "dcp_path": None,
            "base_model": None,
        }
    )


# --------------------------------------------------------------------------- `dserve convert`


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dcp-path", required=True, help="DCP directory (.metadata inside), or a NeMo-RL step / policy directory")
    p.add_argument(
        "--base-model", required=True, help="Hugging Face directory or cached repo id: config.json, tokenizer and parameter names"
    )
    p.add_argument("--output", "-o", required=True, help="where to write the Hugging Face directory")
    p.add_argument(
        "--dtype",
        default="base",
        help="base (the base model's dtypes, default) | keep (as stored) | bfloat16 | float16 | float32",
    )
    p.add_argument("--max-shard-size", type=float, default=5.0, metavar="GB", help="largest safetensors shard in GiB (default 5)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")


def main(args: argparse.Namespace) -> int:
    from dserve.logs import configure_logging

    configure_logging(False, "info")
    try:
        out = convert(
            args.dcp_path,
            args.base_model,
            args.output,
            dtype=args.dtype,
            max_shard_bytes=int(args.max_shard_size * 1024**3),
            overwrite=args.overwrite,
        )
    except (ConversionError, FileNotFoundError, FileExistsError) as exc:
        print(f"dserve convert: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
