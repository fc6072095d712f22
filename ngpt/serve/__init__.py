"""ngpt serve: an OpenAI-compatible HTTP server for a checkpoint, with a chat page and a token inspector.

    ngpt serve --ckpt checkpoints/best.pt                  # http://127.0.0.1:8000/ (needs the `serve` extra)

    from ngpt.serve import ServeOptions, create_app        # the app itself, e.g. for tests
    app = create_app(engine, ServeOptions(model_id="ngpt"))

Modules: schemas.py (the OpenAI wire format and request validation), worker.py (the one thread that
generates), app.py (routes, streaming, errors), reply.py (engine steps → pieces on the wire: stop
strings, logprobs, trace), protocol.py (uvicorn's HTTP/1.1 with read deadlines and JSON protocol
errors: server_config), static/ (the page: index.html, app.js, style.css).
"""

from ngpt.serve.app import ServeOptions, create_app
from ngpt.serve.protocol import server_config

__all__ = ["ServeOptions", "create_app", "server_config"]
