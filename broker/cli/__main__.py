"""``python -m cascade.broker.cli``: the ``cascade`` command."""

from cascade.broker.cli import main

main()
