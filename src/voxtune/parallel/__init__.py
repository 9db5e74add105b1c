"""Who runs the training loop, where, and with how many workers: Ray Tune and DDP worker groups."""
