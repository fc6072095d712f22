"""Measured fast paths the model calls; each module holds one, with the numbers that chose it.

    attention.py             causal attention: block matmuls with a written-out backward on the CPU, SDPA elsewhere
    lm_loss.py               the LM loss: fused head + cross entropy on the CPU (linear_cross_entropy.py)
    linear_cross_entropy.py  the LM head and its cross entropy in row blocks, never holding (N, V) logits
    onednn.py                fp32 CPU matmuls through oneDNN where a one-time timing shows it faster than MKL
    memory.py                glibc keeps freed blocks for the next step (no page faults per step)

Every choice here is made by a measurement on the machine at hand or by device type, never by CPU
flags alone; `ngpt bench speed --train` times them against transformers.
"""
