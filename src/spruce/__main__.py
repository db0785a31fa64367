"""``python -m spruce`` runs the command line."""

from .cli import main

main()
