"""`python -m app.cli ...` runs the `semsearch` command (the benchmarks start services so)."""

from app.cli import main

main()
