"""What every command shares: the Typer app, the consoles, and how errors are printed."""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from app.errors import SemsearchError

cli = typer.Typer(add_completion=False, no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def run(work: Any) -> None:
    try:
        asyncio.run(work)
    except SemsearchError as exc:
        print_error(exc)
        raise typer.Exit(1) from None


def print_error(exc: SemsearchError) -> None:
    """One line (never wrapped, never read as markup): it names the file, line and field."""
    err.print(f"[red]error:[/red] {escape(exc.message)}", soft_wrap=True)
