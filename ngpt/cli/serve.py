"""`ngpt serve`: an OpenAI-compatible HTTP server and a chat page for one checkpoint.

    ngpt serve --ckpt checkpoints/best.pt                          # http://127.0.0.1:8000/
    ngpt serve --ckpt checkpoints/sft/ --port 8080 --api-key "$KEY"
    curl -N http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "Hi"}], "stream": true}'

Needs the `serve` extra (fastapi, uvicorn): pip install -e ".[serve]". Binds to 127.0.0.1 unless
--host says otherwise; on any other address set --api-key (or NGPT_API_KEY).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ngpt.cli.common import CkptOpt, ConfigOpt, ThreadsOpt, WeightsOpt
from ngpt.console import console, kv_table

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    ckpt: CkptOpt,
    host: Annotated[str, typer.Option(help="Address to bind. 127.0.0.1 = this machine only; 0.0.0.0 = every interface.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0 = any free port; uvicorn logs which).")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="NGPT_API_KEY", help="Require `Authorization: Bearer KEY` on /v1 routes.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps")] = "auto",
    precision: WeightsOpt = "auto",
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="Name in /v1/models and responses (default: ngpt-PHASE-stepN).")] = None,
    max_tokens_cap: Annotated[Optional[int], typer.Option("--max-tokens-cap", min=1, help="Largest max_tokens a request may ask for (default: the model's context).")] = None,
    max_concurrent: Annotated[int, typer.Option("--max-concurrent", min=1, help="Requests generating at once (each advances a token in turn).")] = 8,
    max_queue: Annotated[int, typer.Option("--max-queue", min=0, help="Requests waiting behind them; more get HTTP 503.")] = 64,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1, help="Larger request bodies get HTTP 413.")] = 1_000_000,
    read_timeout: Annotated[float, typer.Option("--read-timeout", min=0.1, help="Seconds a client has to send a request's headers, and again its body; slower gets HTTP 408.")] = 30.0,
) -> None:
    """Serve a checkpoint: POST /v1/chat/completions (OpenAI-compatible, streaming), GET /v1/models, /health, and a chat page at /."""
    try:  # heavy imports only once serving really starts: `ngpt --help` stays fast
        import uvicorn

        from ngpt.inference import checkpoint_generation, load_engine
        from ngpt.serve import ServeOptions, create_app, server_config
    except ImportError as e:
        raise RuntimeError(f"`ngpt serve` needs the serve extra ({e.name} is not installed): pip install -e \".[serve]\"") from None
    import torch

    from ngpt.device import device_label
    from ngpt.inference import weights_label
    from ngpt.model import param_count
    from ngpt.settings import load_settings

    api_key = api_key or None  # an empty NGPT_API_KEY means no key, not the empty key
    if threads is not None:
        torch.set_num_threads(threads)
    engine, state, path, chosen = load_engine(ckpt, device, precision)
    # The checkpoint's own generation settings < --config < env.
    generation = load_settings(config, base=checkpoint_generation(state, path)).generation
    cfg = engine.model.cfg
    options = ServeOptions(
        model_id=model_name or f"ngpt-{state.get('phase', 'model')}-step{state.get('step', 0)}",
        api_key=api_key, max_tokens_cap=max_tokens_cap, max_body_bytes=max_body_bytes, read_timeout=read_timeout,
        max_active=max_concurrent, max_waiting=max_queue, generation=generation, created=int(path.stat().st_mtime),
    )
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    n_params = param_count(cfg)  # counted from the shapes: int8 weights are buffers, not parameters
    console.print(kv_table("ngpt serve", {
        "model": options.model_id,
        "checkpoint": f"{path} (phase {state.get('phase', '?')}, step {state.get('step', '?')})",
        "shape": f"{n_params / 1e6:.2f}M params · {cfg.n_layer} layers × {cfg.n_embd} · context {cfg.seq_len}",
        "tokenizer": f"{engine.tok.vocab_size:,} ids · sha256 {engine.tok.sha256[:12]}",
        "device": device_label(engine.device),
        "precision": weights_label(engine.device, precision, chosen),
        "defaults": f"temperature {generation.temperature} · top_k {generation.top_k} · top_p {generation.top_p} · "
                    f"max_tokens {min(generation.max_new_tokens, max_tokens_cap or cfg.seq_len)} (cap {max_tokens_cap or cfg.seq_len})",
        "concurrency": f"{max_concurrent} generating · {max_queue} waiting",
        "limits": f"body {max_body_bytes:,} bytes · {read_timeout:g} s for headers, {read_timeout:g} s for the body",
        "API key": "required (Authorization: Bearer …)" if api_key else "none",
        "web page": f"{url}/",
        "API": f"{url}/v1",
    }))
    if host not in LOOPBACK and not api_key:
        console.print(f"[yellow]Listening on {host} without --api-key: anyone who can reach this port can use the model.")
    server = uvicorn.Server(server_config(create_app(engine, options), host=host, port=port, log_level="info",
                                          timeout_graceful_shutdown=5))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on, once it is done (as uvicorn.run does)
        pass
    if not server.started:  # uvicorn logged why (e.g. the port is taken)
        raise RuntimeError(f"`ngpt serve` could not start on {url} (uvicorn's error is above); pick another --port or --host.")
