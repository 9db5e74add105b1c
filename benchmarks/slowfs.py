"""A read-only FUSE view of a folder whose every open and lookup waits: a shared filesystem's busy metadata
server, made on one machine (benchmarks/staging.py mounts the cache through it). Not a benchmark itself.

    python slowfs.py SOURCE MOUNTPOINT --open-ms 10 --lookup-ms 1 --counts FILE

Each open() waits --open-ms, each getattr (what a lookup or stat asks the server) --lookup-ms; reads pass
through (the kernel's page cache for FUSE files is dropped at every open, as a shared client's often is).
FILE is rewritten every half second with {"opens": n, "lookups": n}: the driver reads how many opens and
lookups a run cost the server. Needs fusepy (PyPI) and libfuse2; runs in the foreground until unmounted.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time

from fuse import FUSE, FuseOSError, Operations  # fusepy

STAT_KEYS = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid")


class SlowView(Operations):
    def __init__(self, source: str, open_s: float, lookup_s: float) -> None:
        self.source, self.open_s, self.lookup_s = source, open_s, lookup_s
        self.counts = {"opens": 0, "lookups": 0}
        self.lock = threading.Lock()

    def _path(self, path: str) -> str:
        return os.path.join(self.source, path.lstrip("/"))

    def _count(self, key: str, wait_s: float) -> None:
        with self.lock:
            self.counts[key] += 1
        time.sleep(wait_s)

    def getattr(self, path, fh=None):
        self._count("lookups", self.lookup_s)
        try:
            st = os.lstat(self._path(path))
        except OSError as exc:
            raise FuseOSError(exc.errno) from None
        return {k: getattr(st, k) for k in STAT_KEYS}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._path(path))]

    def open(self, path, flags):
        self._count("opens", self.open_s)
        return os.open(self._path(path), os.O_RDONLY)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def release(self, path, fh):
        os.close(fh)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source")
    ap.add_argument("mountpoint")
    ap.add_argument("--open-ms", type=float, default=10.0)
    ap.add_argument("--lookup-ms", type=float, default=1.0)
    ap.add_argument("--counts", required=True)
    args = ap.parse_args()
    view = SlowView(os.path.abspath(args.source), args.open_ms / 1000, args.lookup_ms / 1000)

    def write_counts() -> None:
        while True:
            tmp = args.counts + ".tmp"
            with view.lock:
                counts = dict(view.counts)
            with open(tmp, "w") as f:
                json.dump(counts, f)
            os.replace(tmp, args.counts)
            time.sleep(0.5)

    threading.Thread(target=write_counts, daemon=True).start()
    FUSE(view, args.mountpoint, foreground=True, ro=True, allow_other=True, nothreads=False)


if __name__ == "__main__":
    main()
