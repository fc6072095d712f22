"""Speed: training steps (tokens/s, MFU) and generation (decode tokens/s), optionally against another implementation.

    ngpt bench speed --train --compare transformers
    ngpt bench speed --decode --compare llama.cpp

    train.py      full training steps on synthetic batches (run_train_speed), vs transformers
    decode.py     batch-1 greedy generation (run_decode_speed), vs transformers or llama.cpp
    llama_cpp.py  the llama.cpp side: the same weights as a GGUF file, timed through llama-cpp-python,
                  and the machine's limit (weight bytes per token over read bandwidth measured here)
    common.py     what both share (dims, machine, ratios, transformers' config)

    from ngpt.bench.speed import SpeedPlan, run_train_speed, DecodePlan, run_decode_speed
"""

from ngpt.bench.speed.common import COMPARE_CHOICES, machine, model_dims, speed_ratio, transformers_config
from ngpt.bench.speed.decode import (
    DecodePlan,
    DecodeSpeedReport,
    DecodeTiming,
    SyntheticTokenizer,
    build_transformers_generator,
    run_decode_speed,
)
from ngpt.bench.speed.train import (
    ModelTiming,
    Recipe,
    SpeedPlan,
    TrainSpeedReport,
    TrainStep,
    build_ngpt,
    build_transformers_llama,
    run_train_speed,
    synthetic_batch,
    time_interleaved,
)

__all__ = [
    "COMPARE_CHOICES", "DecodePlan", "DecodeSpeedReport", "DecodeTiming", "ModelTiming", "Recipe", "SpeedPlan", "SyntheticTokenizer",
    "TrainSpeedReport", "TrainStep", "build_ngpt", "build_transformers_generator", "build_transformers_llama", "machine",
    "model_dims", "run_decode_speed", "run_train_speed", "speed_ratio", "synthetic_batch", "time_interleaved",
    "transformers_config",
]
