"""``python -m flower_exp.cli``: the same as the ``flower-exp`` command."""

from . import main

main()
