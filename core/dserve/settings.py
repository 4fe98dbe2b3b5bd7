"""Server settings: CLI flags, each also readable from a DSERVE_* environment variable."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

try:  # pydantic-settings >= 2.7: DSERVE_GPU_IDS=0,2,4,6 reaches the validator undecoded
    from pydantic_settings import NoDecode
except ImportError:  # older: the variable must be JSON, DSERVE_GPU_IDS='[0,2,4,6]'
    NoDecode = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DSERVE_", extra="ignore", protected_namespaces=())

    # model
    model: str | None = Field(None, description="checkpoint directory or HF repo id in the local cache; default: the embedded tiny model")
    tokenizer: str | None = Field(None, description="tokenizer directory (default: the model's)")
    served_model_name: str | None = Field(None, description="model id clients use (default: derived from --model)")
    dtype: str = Field("auto", description="auto | float32 | bfloat16 | float16")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    trust_remote_code: bool = Field(False, description="accepted for compatibility and ignored: models are native")
    enforce_eager: bool = Field(False, description="no CUDA graphs: run every forward eagerly")
    compile: bool = Field(False, description="torch.compile the model's forward (first requests of each shape compile)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode; the modes that use CUDA graphs replace dserve's own graphs"
    )
    quantization: Literal["8bit", "4bit"] | None = Field(
        None, description="weight-only int8 / int4 linear layers through torchao (pip install 'dserve[quant]')"
    )
    flash_attention: bool = Field(True, description="let SDPA use flash / cuDNN attention kernels on the GPU (off: math or memory-efficient kernels only)")
    gpu_memory_utilization: float = Field(
        1.0, gt=0.0, le=1.0,
        description="fraction of the GPU's memory this process may allocate (vLLM's flag); beyond it a step "
        "fails with out-of-memory, which sheds requests instead of crashing",
    )
    load_format: Literal["auto", "dummy"] = Field("auto", description="dummy: random weights in the checkpoint's shape (benchmarks; vLLM's flag)")

    # decoding defaults (a request's own fields win)
    engine: str | None = Field(None, description="default engine (default: the model family's)")
    algorithm: str | None = Field(None, description="default algorithm of the engine")
    steps: int | None = Field(None, ge=1, le=512)
    block_length: int | None = Field(None, ge=1)
    remasking: Literal["low_confidence", "random"] | None = None
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    factor: float | None = Field(None, gt=0.0)
    cfg_scale: float | None = Field(None, ge=0.0)
    enable_apd: bool = Field(False, description="default to fastdllm/apd, confidence-adaptive parallel decoding (vdiff's flag)")
    apd_max_parallel: int | None = Field(None, ge=1, description="apd: most tokens committed per step (default 8)")
    apd_threshold: float | None = Field(None, gt=0.0, le=1.0, description="apd: confidence a token needs, left to right (default 0.3)")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int = Field(128, ge=1, description="default max_tokens when a request gives none")

    # server
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    log_json: bool = False
    log_level: str = "info"
    log_prompts: bool = Field(False, description="include prompt text in logs")

    # scheduling
    max_batch_size: int = Field(16, ge=1, description="sequences per running batch")
    max_wait_time: float = Field(0.0, ge=0.0, description="seconds an idle server waits to fill a batch before the first step")
    max_queue_size: int = Field(256, ge=1, description="requests waiting for a batch slot before 429")
    request_timeout: float | None = Field(None, gt=0.0, description="seconds before a request ends with an error")
    shutdown_grace: float = Field(30.0, ge=0.0, description="seconds in-flight requests get to finish after SIGTERM")
    result_ttl: float = Field(600.0, gt=0.0, description="seconds finished async job results are kept")

    # middleware
    api_key: list[str] | None = Field(None, description="accepted bearer key(s)")
    rate_limit_requests: int | None = Field(None, ge=1, description="requests per minute per client")
    max_body_bytes: int | None = Field(4 * 1024 * 1024, ge=1)
    body_read_timeout: float = Field(60.0, gt=0.0, description="seconds a request body may take to arrive before 408")
    cors_origins: list[str] | None = None
    metrics: bool = True
    metrics_require_key: bool = False

    # scale-out (docs/scale-out.md): one worker process per GPU behind a routing front
    gpus: int | None = Field(None, ge=1, description="start this many workers (GPUs 0..N-1) behind a front")
    gpu_ids: (Annotated[list[int], NoDecode] if NoDecode else list[int]) | None = Field(None, description="GPU ids for the workers, e.g. 0,2,4,6")
    worker_start_interval: float = Field(1.0, ge=0.0, description="seconds between worker launches")
    worker_base_port: int | None = Field(None, ge=1, le=65535, description="worker i listens on this port + i (default: free ports)")
    worker_log_dir: str | None = Field(None, description="write worker i's output to DIR/worker-i.log (default: the front's output)")
    # NeMo-RL DCP checkpoints (docs/scale-out.md): converted once to a Hugging Face directory
    dcp_path: str | None = Field(None, description="torch.distributed.checkpoint directory to serve (needs --base-model)")
    base_model: str | None = Field(None, description="Hugging Face directory / repo id giving config.json and tokenizer for --dcp-path")
    dcp_cache_dir: str | None = Field(None, description="where converted DCP checkpoints are kept (default ~/.cache/dserve/dcp)")

    @field_validator("gpu_ids", mode="before")
    @classmethod
    def _split_gpu_ids(cls, value):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [int(part) for part in text.split(",") if part.strip()]
        return value

    def decoding_defaults(self) -> dict:
        return {
            "temperature": self.temperature,
            "steps": self.steps,
            "block_length": self.block_length,
            "remasking": self.remasking,
            "threshold": self.threshold,
            "factor": self.factor,
            "cfg_scale": self.cfg_scale,
            "apd_max_parallel": self.apd_max_parallel,
            "apd_threshold": self.apd_threshold,
        }
