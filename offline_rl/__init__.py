"""offline-rl: offline reinforcement learning of language models on math reasoning."""

__version__ = "0.1.0"
