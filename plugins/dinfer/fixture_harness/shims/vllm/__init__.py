# harness shim: dInfer's LLaDA model imports vllm only for tensor-parallel helpers (TP size 1 here)
