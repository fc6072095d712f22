"""Exports of a checkpoint to other runtimes, one module each.

    hf.py     a transformers folder (LlamaForCausalLM + tokenizer + chat template): `ngpt export hf`
"""
