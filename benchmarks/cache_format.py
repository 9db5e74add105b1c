"""Which on-disk format should the prepared cache use? Time loading one BraTS-sized case.

    .venv/bin/python benchmarks/cache_format.py [--shape 240 240 155] [--repeats 3]

Compares, per case (image [4, 240, 240, 152] float32 + label [1, 240, 240, 152] uint8):
decoding the MSD NIfTI (.nii.gz) and preprocessing it (what training would pay without a cache),
plain .npy (np.load), .npy memory-mapped and fully read, compressed .npz, and voxtune's cache
(cropped to the non-zero box, float16 image): the whole frame as the loader returns it (float16)
and as `load_case` returns it (float32), and one 128^3 window. Prints a markdown
table: median ms per case over the repeats and MB on disk. The page cache is warm for every row
(files were just written), so the numbers measure decode cost, not the disk.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    import nibabel as nib

    from voxtune.data.cache import read_window
    from voxtune.data.plan import brats_settings
    from voxtune.data.prepare import store_case
    from voxtune.data.preprocess import preprocess
    from voxtune.data.synthetic import make_case

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    raw_image, raw_label = make_case(np.random.default_rng(0), tuple(args.shape))
    brats = brats_settings()
    image, label, background = preprocess(raw_image, raw_label, (1.0, 1.0, 1.0), brats)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        nib.save(nib.Nifti1Image(raw_image, np.eye(4)), str(d / "image.nii.gz"))
        nib.save(nib.Nifti1Image(raw_label, np.eye(4)), str(d / "label.nii.gz"))
        np.save(d / "image.npy", image)
        np.save(d / "label.npy", label)
        np.savez_compressed(d / "case.npz", image=image, label=label)
        entry = {**store_case(d, "case", image, label, "float16", background), "image_shape": list(image.shape),
                 "label_shape": list(label.shape)}
        frame = image.shape[1:]

        def nifti():
            img = np.asarray(nib.load(str(d / "image.nii.gz")).dataobj, dtype=np.float32)
            lab = np.asarray(nib.load(str(d / "label.nii.gz")).dataobj, dtype=np.uint8)
            preprocess(img, lab, (1.0, 1.0, 1.0), brats)

        def npy():
            np.load(d / "image.npy"), np.load(d / "label.npy")

        def npy_mmap():  # np.array copies, so every page is really read
            np.array(np.load(d / "image.npy", mmap_mode="r")), np.array(np.load(d / "label.npy", mmap_mode="r"))

        def npz():
            with np.load(d / "case.npz") as z:
                z["image"], z["label"]

        def cropped(size, start=(0, 0, 0), as_float32=False):
            window = read_window(d, entry, "float16", start, size)
            if as_float32:
                window[0].astype(np.float32)

        def mb(*names):
            return sum((d / n).stat().st_size for n in names) / 1e6

        rows = [("NIfTI .nii.gz decode + preprocess", nifti, mb("image.nii.gz", "label.nii.gz")),
                (".npy (np.load)", npy, mb("image.npy", "label.npy")),
                (".npy memory-mapped, fully read", npy_mmap, mb("image.npy", "label.npy")),
                (".npz compressed (np.savez_compressed)", npz, mb("case.npz")),
                ("voxtune cache: cropped float16 .npy, whole frame (float16)", lambda: cropped(frame),
                 mb(*entry["files"].values())),
                ("voxtune cache: whole frame as float32 (load_case)", lambda: cropped(frame, as_float32=True),
                 mb(*entry["files"].values())),
                ("voxtune cache: one 128^3 window (float16)", lambda: cropped((128, 128, 128), (56, 56, 12)),
                 mb(*entry["files"].values()))]
        shape = "x".join(map(str, args.shape))
        print(f"One synthetic case, {shape} x 4 channels, median of {args.repeats} loads:\n")
        print("| format | ms per case | MB on disk |")
        print("|---|---:|---:|")
        for name, fn, size in rows:
            print(f"| {name} | {_median_ms(fn, args.repeats):.0f} | {size:.1f} |")


if __name__ == "__main__":
    main()
