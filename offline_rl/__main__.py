"""``python -m offline_rl COMMAND [FLAGS]``: the ``offline-rl`` command."""

from offline_rl.cli import main

if __name__ == "__main__":
    main()
