"""ngpt: train a small chat LLM from scratch, end to end, from one `ngpt` command."""

__version__ = "0.1.0"
