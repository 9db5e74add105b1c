"""The three ways to spend W workers on a search (one home for their names)."""

# experiment: W trials at once, 1 worker each; data: 1 trial at a time over W DDP workers;
# hybrid: W/K trials at once, K DDP workers each.
MODES = ("experiment", "data", "hybrid")
