"""The embedded default: a synthetic math world, the recipe of the shipped base model, and its assets."""
