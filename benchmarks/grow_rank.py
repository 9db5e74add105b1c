"""One rank of a grown trial, for benchmarks/gpu_bench.py's growth row: started by torch.distributed.run
(torchrun) once per rank, it joins a gloo process group (ranks sharing one GPU, as voxtune's packed
trials do) and trains the global batch split over the ranks, as auto's grown trial does.

    python -m torch.distributed.run --nproc-per-node K benchmarks/grow_rank.py CACHE OUT JSON_CONFIG THREADS
"""
from __future__ import annotations

import json
import sys

import torch.distributed as dist


def main() -> None:
    cache, out, config, threads = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
    from voxtune.config import make_config
    from voxtune.train.loop import fit

    dist.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from torchrun
    world = dist.get_world_size()
    fit(make_config({**config, "batch_size": config["batch_size"] // world}), cache, out, threads=threads)
    dist.barrier()  # leave together: a gloo peer gone mid-teardown can abort the other rank
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
