"""Cache reader benchmark: the native streaming reader against a NumPy memmap loader.

    python bench/bench_reader.py [--gb 1.0] [--batch 1024] [--dir /tmp/klas-bench-cache]

On one cache (one shard, rows of a CIFAR-scale anchor: 1018 fp16 columns) it times, in one run:
1. sequential read of every batch: NumPy memmap slice + copy vs the native reader (with and
   without checksum verification);
2. shuffled batches (chunks of 256 rows in a seeded order): NumPy fancy indexing of the same
   sample order vs the native reader;
3. a loop with a fixed compute per batch (a single-threaded matmul): NumPy's read and compute
   add up; the native reader's read-ahead should hide the reading, so its total should be within
   1.2x of max(pure read, pure compute).
The page cache is warm for both (each peer runs once before it is timed).
Results are appended to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, time_best  # noqa: E402

from klas.cache import BlockEntry, CacheReader, CacheWriter, read_manifest, row_ranges  # noqa: E402
from klas.cache.format import HEADER_BYTES  # noqa: E402
from klas.extraction.extract import DEFAULT_SHARD_ROWS  # noqa: E402

SEQ_NP_OPEN = "first pass: numpy memmap, sequential (slice + copy)"
SEQ_OPEN_VERIFY = "first pass: native reader, sequential, checksums verified"
SEQ_OPEN = "first pass: native reader, sequential, no verification"
SEQ_NP = "numpy memmap, sequential (slice + copy)"
SEQ = "native reader, sequential"
SHUF_NP = "numpy memmap, shuffled (fancy indexing, same order)"
SHUF = "native reader, shuffled chunks of 256"
COMPUTE = "pure compute (matmul per batch, 1 thread)"
NP_COMPUTE = "numpy memmap + compute"
NATIVE_COMPUTE = "native reader + compute"

WIDTH = 1008 + 10  # pooled blocks of ResNet-56 (9x16 + 9x32 + 9x64) + 10 logits


def build_cache(path: Path, rows: int, shard_rows: int) -> None:
    """Random fp16 rows (seed 0): the same bytes whatever the shard size."""
    if (path / "manifest.json").exists():
        m = read_manifest(path)
        if m.num_samples == rows and m.shards[0].rows == min(rows, shard_rows):
            return
    blocks = (BlockEntry("blocks", 1, WIDTH - 10, 0), BlockEntry("logits", 0, 10, WIDTH - 10, kind="logits"))
    w = CacheWriter(path, anchor="bench:synthetic", split="val", dtype="float16", blocks=blocks, num_classes=10,
                    num_samples=rows, shard_rows=shard_rows, source={"bench": True})
    rng = np.random.default_rng(0)
    step = 65536
    for start in range(0, rows, step):
        n = min(step, rows - start)
        w.append(rng.standard_normal((n, WIDTH), dtype=np.float32).astype(np.float16), rng.integers(0, 10, n))
    w.finish()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--dir", default="/tmp/klas-bench-cache")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per peer (best and median reported)")
    ap.add_argument("--passes", type=int, default=4, help="passes over the cache in one timed run")
    args = ap.parse_args()

    rows = int(args.gb * 2**30) // (WIDTH * 2)
    # NumPy peers read one big shard as one array; the native reader reads the same rows in the
    # shards extraction writes by default (4096 rows each).
    flat, path = Path(args.dir) / "one-shard", Path(args.dir) / "sharded"
    build_cache(flat, rows, rows)
    build_cache(path, rows, DEFAULT_SHARD_ROWS)
    shard = flat / read_manifest(flat).shards[0].file
    mm = np.memmap(shard, dtype=np.float16, mode="r", offset=HEADER_BYTES, shape=(rows, WIDTH))
    nbytes = rows * WIDTH * 2
    bs = args.batch
    torch.set_num_threads(1)  # one core computes, the other is free for the read-ahead thread

    def open_memmap():
        return np.memmap(shard, dtype=np.float16, mode="r", offset=HEADER_BYTES, shape=(rows, WIDTH))

    def numpy_sequential(mm):
        for s in range(0, rows, bs):
            np.array(mm[s:s + bs])

    def native_sequential(reader):
        for _ in reader.batches(bs):
            pass

    ranges = row_ranges(rows, shuffle=True, seed=0, chunk_rows=256)
    order = np.concatenate([np.arange(s, s + c) for s, c in ranges])

    def numpy_shuffled(mm):
        for s in range(0, rows, bs):
            mm[order[s:s + bs]]

    def native_shuffled(reader):
        for _ in reader.batches(bs, shuffle=True, seed=0, chunk_rows=256):
            pass

    sample = torch.from_numpy(np.array(mm[:bs]))
    side = 16
    a = b = torch.randn(side, side)

    def compute(batch: torch.Tensor):
        """Fixed work per batch: one square matmul (releases the GIL), after touching the batch."""
        batch[0, 0].item()
        return torch.mm(a, b)

    def pure_compute():
        for _ in range(0, rows, bs):
            compute(sample)

    # Calibrate the compute to about the time of a pure read, where hiding the read matters most.
    read_time = time_best(lambda: numpy_sequential(mm), 3)[0]
    pure_compute()  # warm-up, so the first size is not judged by a cold start
    for side in range(16, 1025, 8):
        a = b = torch.randn(side, side)
        if time_best(pure_compute, 3)[0] >= read_time:
            break

    def numpy_with_compute(mm):
        for s in range(0, rows, bs):
            compute(torch.from_numpy(np.array(mm[s:s + bs])))

    def native_with_compute(reader):
        for b in reader.batches(bs):
            compute(torch.from_numpy(b.features))

    def fresh_reader(verify):
        return CacheReader(path, backend="native", verify=verify)

    kept = fresh_reader(True)  # verified once in its first (warm-up) pass, like a training loop
    peers = {
        # first pass: every peer opens the files inside the timed run
        SEQ_NP_OPEN: lambda: numpy_sequential(open_memmap()),
        SEQ_OPEN_VERIFY: lambda: native_sequential(fresh_reader(True)),
        SEQ_OPEN: lambda: native_sequential(fresh_reader(False)),
        # later epochs: files already open (and verified)
        SEQ_NP: lambda: numpy_sequential(mm),
        SEQ: lambda: native_sequential(kept),
        SHUF_NP: lambda: numpy_shuffled(mm),
        SHUF: lambda: native_shuffled(kept),
        COMPUTE: pure_compute,
        NP_COMPUTE: lambda: numpy_with_compute(mm),
        NATIVE_COMPUTE: lambda: native_with_compute(kept),
    }
    def passes(fn):
        def run():
            for _ in range(args.passes):
                fn()
        return run

    times = {}
    for name, fn in peers.items():
        fn()  # warm the page cache and the allocator
        times[name] = time_best(passes(fn), args.repeats)
        print(f"{name}: best {times[name][0]:.3f} s", flush=True)

    def best(name):
        return times[name][0]

    ref = {SEQ_NP_OPEN: SEQ_NP_OPEN, SEQ_OPEN_VERIFY: SEQ_NP_OPEN, SEQ_OPEN: SEQ_NP_OPEN, SEQ_NP: SEQ_NP,
           SEQ: SEQ_NP, SHUF_NP: SHUF_NP, SHUF: SHUF_NP, NP_COMPUTE: NP_COMPUTE, NATIVE_COMPUTE: NP_COMPUTE}
    lines = [
        f"Cache: {nbytes / 2**30:.2f} GiB, {rows} rows x {WIDTH} fp16 columns (NumPy: one file; native: shards "
        f"of {DEFAULT_SHARD_ROWS} rows); batch {bs} rows; compute: one [{side}, {side}] @ [{side}, {side}] "
        f"matmul per batch; "
        f"{args.passes} passes per timed run, best of {args.repeats}, page cache warm. 'First pass' peers open the files inside the timed run; "
        "the others reuse open (and, for the native reader, already verified) files.",
        "",
        "| peer | best s | median s | GB/s | speed vs its NumPy peer |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (b, med) in times.items():
        speed = f"{args.passes * nbytes / b / 1e9:.2f}" if name not in (COMPUTE, NP_COMPUTE, NATIVE_COMPUTE) else "-"
        ratio = f"{best(ref[name]) / b:.2f}x" if name in ref else "-"
        lines.append(f"| {name} | {b:.3f} | {med:.3f} | {speed} | {ratio} |")
    read_max = max(best(SEQ), best(COMPUTE))
    lines += [
        "",
        f"- sequential, later epochs, native / NumPy: {best(SEQ_NP) / best(SEQ):.2f}x (target >= 0.8x)",
        f"- sequential, first pass, native with checksum verification / NumPy: "
        f"{best(SEQ_NP_OPEN) / best(SEQ_OPEN_VERIFY):.2f}x; without verification: "
        f"{best(SEQ_NP_OPEN) / best(SEQ_OPEN):.2f}x",
        f"- shuffled, native / NumPy fancy indexing: {best(SHUF_NP) / best(SHUF):.2f}x (target >= 1x)",
        f"- read + compute, native total / max(pure read, pure compute): "
        f"{best(NATIVE_COMPUTE) / read_max:.2f} (target <= 1.2); NumPy's: {best(NP_COMPUTE) / read_max:.2f} "
        f"(their sum would be {(best(SEQ_NP) + best(COMPUTE)) / read_max:.2f})",
    ]
    append_results("Cache reader: native streaming reader vs NumPy memmap", lines)


if __name__ == "__main__":
    main()
