"""`semsearch`: serve the services, index documents, search a running gateway.

Every flag's default comes from the settings classes, so a flag and its environment variable
always agree (`--port` <-> `SEMSEARCH_PORT`, and so on).
"""

from __future__ import annotations

from app.cli import index, search, serve  # noqa: F401  (each module registers its commands)
from app.cli.common import cli

cli.info.help = __doc__


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
