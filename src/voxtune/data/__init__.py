"""Data layer: MSD task folders -> prepared cache -> torch datasets. Knows nothing of Ray or training.

Public API: `load_case(cache_dir, case_id) -> (image float32 [C, X, Y, Z], label uint8 [R, X, Y, Z])`.
"""
from voxtune.data.cache import CACHE_VERSION, case_ids, load_case, read_manifest, region_names

__all__ = ["CACHE_VERSION", "case_ids", "load_case", "read_manifest", "region_names"]
