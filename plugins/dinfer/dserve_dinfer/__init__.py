"""dserve-dinfer: dInfer's blockwise decoding algorithms (inclusionAI/dInfer) as a dserve engine."""
