"""How good is a model: bits per byte on text, multiple-choice and completion benchmarks, chat evals.

    ngpt eval bpb --ckpt checkpoints/best.pt --text notes.txt
    ngpt eval tasks --ckpt checkpoints/best.pt -c configs/eval-offline.json

    bpb.py       bits per byte / loss per token: one implementation for training's val_bpb, `ngpt eval bpb`
                 and `ngpt bench learn`
    text.py      the token stream bpb scores: text files/folders as documents, or a pretrain cache split
    tasks/       the task registry: one module per data format (piqa, arc, commonsense_qa, boolq, lambada,
                 copa, hellaswag, winogrande), each with lm-eval's prompt; base.py says what a task is
    taskdata.py  a task's local copy (file or folder, split by file name) or its hub dataset, every row checked
    prompts.py   lm-eval's few-shot sampler, request strings and joint tokenization
    loglik.py    batched log-likelihood of continuations (shared contexts once, over a KV cache)
    harness.py   tasks end to end: acc, acc_norm, baseline, centered, CORE
    chat.py      --chat: questions through the chat template, the answer letter from the greedy reply
    runner.py    what the CLI and the pipeline call: load a checkpoint, score, eval.json beside it
    summary.py, progress.py   result rows for tables and report.md; the progress bar
"""
