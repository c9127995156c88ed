"""``python -m offline_rl COMMAND [FLAGS]``: the ``offline-rl`` command."""

from offline_rl.cli import main

main()
