"""`python -m ngpt ...` is the same as the `ngpt` console script (torchrun uses this form)."""

from ngpt.cli.main import main

main()
