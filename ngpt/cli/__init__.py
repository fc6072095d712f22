"""The Typer CLI: one thin module per command group (resolve settings → print the plan → call the library)."""
