"""Left-to-right decoding with a diffusion model: each step commits the leftmost
`tokens_per_step` masked positions with their argmax (no blocks, no confidence ordering)."""

import torch

from dserve.engine import AlgorithmRunner, StepResult


class LeftToRightRunner(AlgorithmRunner):
    def init_state(self, seq):
        canvas = torch.full((seq.prompt_len + seq.gen_length,), self.model.info.mask_id, dtype=torch.long)
        canvas[: seq.prompt_len] = torch.tensor(seq.prompt_ids)
        return canvas

    @torch.inference_mode()
    def step(self):
        results = []
        for seq in list(self.sequences):  # one sequence per forward keeps the example short
            canvas = seq.engine_state
            logits = self.model(canvas[None].to(self.model.device))[0]
            masked = (canvas == self.model.info.mask_id).nonzero().flatten()[: seq.params.tokens_per_step]
            tokens = logits[masked].argmax(-1).cpu()
            canvas[masked] = tokens
            committed = list(zip((masked - seq.prompt_len).tolist(), tokens.tolist()))
            done = not bool((canvas == self.model.info.mask_id).any())
            results.append(StepResult(seq, committed, done))
        return results
