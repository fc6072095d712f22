"""Training: one loop for pretrain and SFT, with checkpoint, schedule, evaluation and distributed helpers."""
