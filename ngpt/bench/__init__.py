"""Benchmarks: how fast ngpt trains here (`speed`), against a matmul peak measured on the spot (`peak`).

    ngpt bench speed --train --compare transformers
"""
