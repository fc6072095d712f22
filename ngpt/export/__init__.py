"""Exports of a checkpoint to other runtimes, one module each.

    hf.py     a transformers folder (LlamaForCausalLM + tokenizer + chat template): `ngpt export hf`
    gguf.py   one GGUF file for llama.cpp, ollama and LM Studio (+ an ollama Modelfile): `ngpt export gguf`
"""
