"""Command groups whose issues have not landed yet: each says so and exits 2, instead of pretending."""

from __future__ import annotations

import typer

from ngpt.console import error_panel


def _pending(group: str, commands: list[str], issue: str) -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)
    for name in commands:

        def command(name: str = name) -> None:
            error_panel(f"`ngpt {group} {name}` is not implemented yet; it lands with the {issue} issue.", "not implemented")
            raise typer.Exit(2)

        app.command(name, help=f"(not implemented yet: {issue})", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(command)
    return app


chat_app = _pending("chat", ["run"], "inference")
serve_app = _pending("serve", ["run"], "inference")
