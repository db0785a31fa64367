"""``python -m spruce.train`` (and so ``torchrun -m spruce.train``) = ``spruce train``."""

from ..cli.training import main

main()
