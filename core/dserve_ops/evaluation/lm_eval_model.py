"""`dserve` as an lm-evaluation-harness model: loglikelihood requests go to the server's
POST /v1/loglikelihood (the published LLaDA estimator, or exact AR log-probabilities on
Nemotron), generate_until requests to /v1/completions. Imported by `dserve lm-eval`, which
registers it and runs lm-eval's own CLI (docs/eval.md):

    dserve lm-eval --model dserve --model_args base_url=http://127.0.0.1:8000,mc_num=128 --tasks arc_challenge

model_args: base_url, model (default: the server's), api_key, tokenizer (a local tokenizer
directory or hub id whose chat template `--apply_chat_template` applies), the estimator's mc_num,
mc_batch_size, cfg_scale, check_greedy (default false, as the published evaluation commands
run), seed, add_special_tokens; concurrency (requests in flight), timeout; any other key (engine,
generation_algorithm, steps, block_length, threshold, ...) is sent with every generation request.
"""

from __future__ import annotations

import concurrent.futures
from collections import defaultdict
from typing import Any

import httpx
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

# what lm-eval passes besides model_args, which a server-side model has no use for
_HARNESS_KEYS = ("batch_size", "max_batch_size", "device")
_ESTIMATOR_KEYS = ("mc_num", "mc_batch_size", "cfg_scale", "seed", "add_special_tokens")
MAX_STOP = 8  # the server's limit on stop sequences


@register_model("dserve")
class DserveLM(LM):
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        model: str | None = None,
        api_key: str | None = None,
        check_greedy: bool = False,
        concurrency: int = 16,
        timeout: float = 600.0,
        max_gen_toks: int = 256,
        tokenizer: str | None = None,
        **kwargs: Any,
    ):
        super().__init__()
        self._tokenizer_name = tokenizer
        self._tokenizer: Any = None
        for key in _HARNESS_KEYS:
            kwargs.pop(key, None)
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self.model = model or self.client.get("/v1/models").raise_for_status().json()["data"][0]["id"]
        self.estimator = {k: kwargs.pop(k) for k in _ESTIMATOR_KEYS if k in kwargs}
        self.estimator["check_greedy"] = bool(check_greedy)
        self.decoding = kwargs  # engine, generation_algorithm, steps, threshold, ...
        self.concurrency = int(concurrency)
        self.max_gen_toks = int(max_gen_toks)

    @property
    def tokenizer_name(self) -> str:
        return self._tokenizer_name or self.model

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The chat template of `tokenizer=` (the served model's own tokenizer files)."""
        if self._tokenizer_name is None:
            raise ValueError("--apply_chat_template needs the model's tokenizer: add tokenizer=PATH_OR_HUB_ID to --model_args")
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_name, trust_remote_code=True)
        return self._tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post(path, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text}")
        return response.json()

    def _map(self, fn, items: list) -> list:
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """One /v1/loglikelihood call per distinct context, its continuations together."""
        by_context: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for i, request in enumerate(requests):
            context, continuation = request.args
            by_context[context].append((i, continuation))

        def score(item: tuple[str, list[tuple[int, str]]]) -> list[tuple[int, float, bool]]:
            context, entries = item
            body = {"model": self.model, "context": context, "continuations": [c for _, c in entries], **self.estimator}
            results = self._post("/v1/loglikelihood", body)["results"]
            return [(i, r["loglikelihood"], bool(r["is_greedy"])) for (i, _), r in zip(entries, results)]

        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for chunk in self._map(score, list(by_context.items())):
            for i, value, greedy in chunk:
                out[i] = (value, greedy)
                self.cache_hook.add_partial("loglikelihood", requests[i].args, (value, greedy))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("dserve scores continuations given a context; rolling (perplexity) tasks are not supported")

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        def generate(request) -> str:
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs)
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else [u for u in until if u]
            body = {
                "model": self.model,
                "prompt": context,
                "max_tokens": int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks)),
                "temperature": float(gen_kwargs.pop("temperature", 0.0)),
                **({"stop": until[:MAX_STOP]} if until else {}),
                **self.decoding,
            }
            text = self._post("/v1/completions", body)["choices"][0]["text"]
            for stop in until:  # beyond the server's limit of stop sequences
                text = text.split(stop)[0]
            return text

        texts = self._map(generate, list(requests))
        for request, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", request.args, text)
        return texts
