"""dserve-fastdllm: the Fast-dLLM decoding engine (NVlabs/Fast-dLLM, LLaDA loops).

Algorithms: `basic` (parallel decoding, full canvas every step), `prefix_cache` and
`dual_cache` (the same rules over an approximate KV cache rebuilt at every block start).
"""
