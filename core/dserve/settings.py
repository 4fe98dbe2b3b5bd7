"""Server settings: CLI flags, each also readable from a DSERVE_* environment variable.

`Settings` is `ServerSettings` plus one attribute per decoding field with a server flag: the
core's (dserve.fields.CORE_FIELDS) and those the installed plugins register through the
`register_server_flags` hook (e.g. the fastdllm plugin's flags for its algorithms).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, create_model, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dserve.fields import DecodingField, settings_fields

# Lists given as text: "a", "a,b" or a JSON list ["a", "b"] (flags that repeat give a list of
# such texts). NoDecode hands the DSERVE_* variable's text to the validator undecoded; without
# it pydantic-settings would insist on JSON.
_TextList = Annotated[list[str], NoDecode]
_IntList = Annotated[list[int], NoDecode]


def _split_list(value: Any) -> Any:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        return value
    items: list[Any] = []
    for text in texts:
        if not isinstance(text, str):
            items.append(text)
            continue
        text = text.strip()
        if text.startswith("["):
            items.extend(json.loads(text))
        else:
            items.extend(part.strip() for part in text.split(",") if part.strip())
    return items


def api_keys_from_text(text: str | None) -> list[str]:
    """The keys a `DSERVE_API_KEY` value names (one key, k1,k2 or a JSON list), as the server
    reads it: clients on the same machine (dserve bench) send the first."""
    return [str(k) for k in _split_list(text)] if text else []


class ServerSettings(BaseSettings):
    """The settings that are not decoding fields (those come from dserve.fields)."""

    model_config = SettingsConfigDict(env_prefix="DSERVE_", extra="ignore", protected_namespaces=())

    # model
    model: str | None = Field(
        None,
        description="checkpoint directory or Hugging Face repo id (downloaded, or read from the cache); "
        "default: the embedded tiny model",
    )
    revision: str | None = Field(None, description="--model's Hub revision: branch, tag or commit (default: main)")
    download_dir: str | None = Field(None, description="Hugging Face cache directory for --model (default: HF_HUB_CACHE)")
    tokenizer: str | None = Field(None, description="tokenizer directory (default: the model's)")
    served_model_name: str | None = Field(None, description="model id clients use (default: derived from --model)")
    dtype: str = Field(
        "auto", description="auto | float32 | bfloat16 | float16 (auto: the checkpoint's dtype on GPU, float32 on CPU)"
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    trust_remote_code: bool = Field(False, description="accepted for compatibility and ignored: models are native")
    enforce_eager: bool = Field(False, description="no CUDA graphs: run every forward eagerly (GPU only)")
    compile: bool = Field(
        False, description="torch.compile the model's forward (first requests of each shape compile; --no-compile: off)"
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode; the modes that use CUDA graphs replace dserve's own graphs"
    )
    quantization: Literal["8bit", "4bit", "fp8"] | None = Field(
        None,
        description="8bit / 4bit: weight-only int8 / int4 linear layers through torchao (pip install 'dserve[quant]'); "
        "fp8: e4m3 weights and activations with row-wise scales (torch._scaled_mm; Hopper/Ada GPUs, emulated elsewhere)",
    )
    flash_attention: bool = Field(
        True,
        description="let SDPA use flash / cuDNN attention kernels on the GPU (--no-flash-attention: math or memory-efficient kernels only)",
    )
    gpu_memory_utilization: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="fraction of the GPU's memory this process may allocate (vLLM's flag); beyond it a step "
        "fails with out-of-memory, which sheds requests instead of crashing",
    )
    load_format: Literal["auto", "dummy"] = Field(
        "auto", description="dummy: random weights in the checkpoint's shape (benchmarks; vLLM's flag)"
    )

    # server
    host: str = Field("0.0.0.0", description="bind address")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    log_json: bool = Field(False, description="JSON log lines")
    log_level: str = Field("info", description="debug | info | warning | error")
    log_prompts: bool = Field(False, description="include prompt text in logs")

    # scheduling
    max_batch_size: int = Field(16, ge=1, description="sequences per running batch")
    max_wait_time: float = Field(0.0, ge=0.0, description="seconds an idle server waits to fill a batch before the first step")
    max_queue_size: int = Field(256, ge=1, description="requests waiting for a batch slot before 429")
    request_timeout: float | None = Field(None, gt=0.0, description="seconds before a request ends with an error")
    shutdown_grace: float = Field(30.0, ge=0.0, description="seconds in-flight requests get to finish after SIGTERM")
    result_ttl: float = Field(600.0, gt=0.0, description="seconds finished async job results are kept")

    # middleware
    api_key: _TextList | None = Field(
        None, description="accepted bearer key(s): one key, k1,k2 or a JSON list; the flag can repeat"
    )
    rate_limit_requests: int | None = Field(None, ge=1, description="requests per minute per client")
    strict_fields: bool = Field(
        False, description="refuse (400) request fields the server does not know, instead of ignoring and reporting them"
    )
    max_body_bytes: int | None = Field(4 * 1024 * 1024, ge=1, description="largest request body in bytes")
    body_read_timeout: float = Field(60.0, gt=0.0, description="seconds a request body may take to arrive before 408")
    cors_origins: list[str] | None = Field(None, description="allowed CORS origin (the flag --cors-origin repeats)")
    metrics: bool = Field(True, description="serve /metrics (--no-metrics: off)")
    metrics_require_key: bool = Field(False, description="/metrics needs the API key")

    # scale-out (docs/scale-out.md): one worker process per GPU behind a routing front
    gpus: int | None = Field(None, ge=1, description="start this many workers (GPUs 0..N-1) behind a front")
    gpu_ids: _IntList | None = Field(None, description="GPU ids for the workers, e.g. 0,2,4,6")
    worker_start_interval: float = Field(1.0, ge=0.0, description="seconds between worker launches")
    worker_base_port: int | None = Field(
        None, ge=1, le=65535, description="worker i listens on this port + i (default: free ports)"
    )
    worker_log_dir: str | None = Field(
        None, description="write worker i's output to DIR/worker-i.log (default: the front's output)"
    )
    # NeMo-RL DCP checkpoints (docs/scale-out.md): converted once to a Hugging Face directory
    dcp_path: str | None = Field(None, description="torch.distributed.checkpoint directory to serve (needs --base-model)")
    base_model: str | None = Field(
        None, description="Hugging Face directory / repo id giving config.json and tokenizer for --dcp-path"
    )
    dcp_cache_dir: str | None = Field(None, description="where converted DCP checkpoints are kept (default ~/.cache/dserve/dcp)")

    @field_validator("gpu_ids", "api_key", mode="before")
    @classmethod
    def _split_lists(cls, value):
        return _split_list(value)


def settings_class(fields: Sequence[DecodingField]) -> type[ServerSettings]:
    """ServerSettings plus the decoding fields' server flags (name, type, bounds, default)."""
    clash = sorted(set(settings_fields(fields)) & set(ServerSettings.model_fields))
    if clash:
        raise ValueError(f"decoding field(s) {clash} would replace server settings of the same name")
    return create_model("Settings", __base__=ServerSettings, __module__=__name__, **settings_fields(fields))


def _installed_fields() -> tuple[DecodingField, ...]:
    from dserve.plugins import get_registry

    return get_registry().decoding_fields


if TYPE_CHECKING:

    class Settings(ServerSettings):
        """What type checkers see: the decoding fields are attributes built at import."""

        def __getattr__(self, name: str) -> Any: ...

else:
    Settings = settings_class(_installed_fields())
