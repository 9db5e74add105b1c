"""Node-local staging of a prepared cache (`--stage DIR`): a copy on a node's own disk that every trial,
rank and loader process of that node reads instead of the shared one.

A parallel filesystem (Lustre, GPFS, BeeGFS) serves large sequential reads well and many small opens
badly, while a search opens and maps case files per sample from every rank and loader process. Staging
copies each case file once per node, in large sequential reads, and the reads of the search then stay
on the node.

    DIR/voxtune-stage-<key>/              the staged cache (key: the shared cache's resolved path)
    DIR/voxtune-stage-<key>.lock          held while one process stages; the others of the node wait

A staged folder is trusted only as far as it is checked: each file lands under a temporary name, is
hashed while it is copied, and is renamed into place only when its sha256 matches the manifest's; a
reused file is hashed again (a file cut short by a node that died mid-copy never got its name, and one
damaged since is copied anew). The manifest is copied last, so a folder without it is never read as a
cache; a staged manifest that differs from the shared one (the cache was prepared again) empties the
folder first. A complete stage records each file's size and modification time (VERIFIED); a bench, which
stages once before its first search, lets its searches reuse the copy against that record instead of
hashing it again inside every timed search (`quick`). Too little space is not an error: `Staged.path` is None and `Staged.note` says what was
needed, what was free, and that the shared copy is read instead.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from voxtune.data.cache import KINDS, MANIFEST, read_manifest, sha256_file
from voxtune.errors import VoxtuneError
from voxtune.files import TMP_MARK

PREFIX = "voxtune-stage-"
VERIFIED = ".voxtune-verified.json"  # {relative path: [bytes, mtime_ns]} of the files as last verified
KEEP_WITHOUT_STAGE = "--keep-stage keeps what --stage DIR copies; without --stage nothing is staged: drop it"
_CHUNK = 1 << 22
_SPARE = 64 << 20  # bytes left free on the node's disk beyond the copy (logs, checkpoints' temp files)


@dataclass
class Staged:
    """What staging did on one node. path None: read the shared cache (note says why)."""

    node: str
    path: str | None
    seconds: float
    bytes_copied: int
    files_copied: int
    files_reused: int
    note: str

    def to_dict(self) -> dict:
        return asdict(self)


def stage_folder(dest: str | Path, cache_dir: str | Path) -> Path:
    """DEST/voxtune-stage-<key>: one folder per shared cache, so two searches on two caches share a DEST."""
    key = hashlib.sha256(str(Path(cache_dir).resolve()).encode()).hexdigest()[:12]
    return Path(os.path.expandvars(str(dest))).expanduser() / f"{PREFIX}{key}"


@contextmanager
def _locked(path: Path):
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # node-local disk: the lock is the node's own
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _copy_verified(src: Path, dst: Path, sha256: str) -> int:
    """Copy src to dst through a temporary name, hashing as it goes; renamed into place only on a match."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}{TMP_MARK}{os.getpid()}")
    digest, size = hashlib.sha256(), 0
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while block := fin.read(_CHUNK):
                digest.update(block)
                fout.write(block)
                size += len(block)
            fout.flush()
            os.fsync(fout.fileno())
        if digest.hexdigest() != sha256:
            raise VoxtuneError(f"{src}: checksum does not match the manifest while staging it (the shared cache "
                               f"is damaged); `voxtune verify --cache {src.parent.parent}` lists every such file")
        os.replace(tmp, dst)
        return size
    finally:
        tmp.unlink(missing_ok=True)


def _needed(manifest: dict, folder: Path, quick: bool = False) -> tuple[list[tuple[str, int, str]], int]:
    """([(relative path, bytes, sha256)] still to copy, files already staged and intact). quick: a file
    whose size and mtime are those VERIFIED recorded counts as intact without being hashed again."""
    todo, reused = [], 0
    record = _read_record(folder) if quick else {}
    for entry in manifest["cases"]:
        for kind in KINDS:
            rel, size, digest = entry["files"][kind], entry["bytes"][kind], entry["sha256"][kind]
            path = folder / rel
            if path.is_file() and path.stat().st_size == size and (
                    record.get(rel) == _stamp(path) or sha256_file(path) == digest):
                reused += 1
            else:
                todo.append((rel, size, digest))
    return todo, reused


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _read_record(folder: Path) -> dict:
    try:
        return json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}


def _write_record(folder: Path, manifest: dict) -> None:
    rels = [entry["files"][kind] for entry in manifest["cases"] for kind in KINDS]
    tmp = folder / f"{VERIFIED}{TMP_MARK}{os.getpid()}"
    tmp.write_text(json.dumps({rel: _stamp(folder / rel) for rel in rels}))
    os.replace(tmp, folder / VERIFIED)


def stage_cache(cache_dir: str | Path, dest: str | Path, node: str | None = None, quick: bool = False) -> Staged:
    """Stage every case of the cache's manifest into DEST (see the module's docstring); returns what was
    done. A damaged shared file -> VoxtuneError naming it. DEST may hold $VARS, expanded here, on the node.
    quick: reuse files by the VERIFIED record (size and mtime) rather than by hashing them again."""
    t0 = time.perf_counter()
    node = node or socket.gethostname()
    cache_dir = Path(cache_dir).resolve()
    source = (cache_dir / MANIFEST).read_bytes()
    manifest = read_manifest(cache_dir)
    folder = stage_folder(dest, cache_dir)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return Staged(node, None, time.perf_counter() - t0, 0, 0, 0,
                      f"{folder.parent}: cannot stage there ({exc.strerror}); reading the shared copy {cache_dir}")
    with _locked(folder.with_name(folder.name + ".lock")):
        staged_manifest = folder / MANIFEST
        if staged_manifest.is_file() and staged_manifest.read_bytes() != source:
            shutil.rmtree(folder)  # the cache was prepared again since: nothing staged from it stands
        folder.mkdir(exist_ok=True)
        for stale in folder.rglob(f"*{TMP_MARK}*"):  # left by a stager that died mid-copy
            stale.unlink(missing_ok=True)
        todo, reused = _needed(manifest, folder, quick)
        if todo:
            staged_manifest.unlink(missing_ok=True)  # the folder is a cache again only when complete
        need, free = sum(size for _, size, _ in todo), shutil.disk_usage(folder).free
        if need + _SPARE > free:
            return Staged(node, None, time.perf_counter() - t0, 0, 0, reused,
                          f"{folder}: staging needs {need} bytes (+{_SPARE} spare), {free} free; "
                          f"reading the shared copy {cache_dir}")
        copied = 0
        try:
            for rel, _, digest in todo:
                copied += _copy_verified(cache_dir / rel, folder / rel, digest)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            return Staged(node, None, time.perf_counter() - t0, copied, 0, reused,
                          f"{folder}: no space left while staging ({exc.strerror}); reading the shared copy {cache_dir}")
        if todo or not quick:
            _write_record(folder, manifest)
        if not staged_manifest.is_file():
            tmp = staged_manifest.with_name(f"{MANIFEST}{TMP_MARK}{os.getpid()}")
            tmp.write_bytes(source)
            os.replace(tmp, staged_manifest)
    how = "by size and mtime as last verified" if quick else "each hashed again"
    return Staged(node, str(folder), time.perf_counter() - t0, copied, len(todo), reused,
                  f"{folder}: {len(todo)} file(s) copied ({copied / 1e6:.1f} MB), {reused} reused ({how})")


def unstage(cache_dir: str | Path, dest: str | Path) -> list[str]:
    """Remove what stage_cache made in DEST for this cache (the folder and its lock file); returns what
    could not be removed (nothing, normally)."""
    folder = stage_folder(dest, cache_dir)
    lock = folder.with_name(folder.name + ".lock")
    shutil.rmtree(folder, ignore_errors=True)
    lock.unlink(missing_ok=True)
    return [str(p) for p in (folder, lock) if p.exists()]


def stage_arg(dest: str | None, keep: bool) -> str | None:
    """--stage DIR as the run records and passes it on: refused with --keep-stage but no DIR; made absolute
    unless it starts with $ or ~, which expand on each node (stage_folder)."""
    if keep and not dest:
        raise VoxtuneError(KEEP_WITHOUT_STAGE)
    return dest if not dest or dest.startswith(("$", "~")) else str(Path(dest).absolute())


@contextmanager
def staged(cache_dir: str, dest: str | None, keep: bool = False, log=print) -> Iterator[str]:
    """`train --stage DIR`: the cache to read, this machine's staged copy where it could be made (removed
    on the way out unless keep), else the shared one."""
    dest = stage_arg(dest, keep)
    if not dest:
        yield cache_dir
        return
    done = stage_cache(cache_dir, dest)
    log(f"stage: {done.note} in {done.seconds:.1f}s")
    yield done.path or cache_dir
    if done.path and not keep:
        unstage(cache_dir, dest)
