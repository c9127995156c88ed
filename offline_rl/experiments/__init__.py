"""Experiments that chain the commands: compare (plan, run, report, plots), iterate (rounds), demo."""
