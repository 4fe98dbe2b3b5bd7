"""Log-likelihood scoring: a continuation's log-likelihood given a context, computed through
the scheduler and the core's batched forward like any generation (docs/eval.md).

- Mask predictors (LLaDA, Dream: models with bidirectional attention): the Monte Carlo
  estimator of LLaDA's published `get_log_likelihood.py` and the greedy check of its lm-eval
  adapter (`monte_carlo`).
- Models with an autoregressive mode (Nemotron-Labs-Diffusion under causal attention): exact
  token log-probabilities (`autoregressive`).
"""
