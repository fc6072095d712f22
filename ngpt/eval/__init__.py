"""How good is a model: bits per byte on text, multiple-choice and completion benchmarks, chat evals.

    bpb.py     bits per byte / loss per token: one implementation for training's val_bpb, `ngpt eval bpb`
               and `ngpt bench learn`
"""
