"""Cache reader benchmark: the native streaming reader against a NumPy memmap loader.

    pytest bench/bench_reader.py [--bench-dir /tmp/klas-bench-cache] --benchmark-json=RUN.json

On one cache (random fp16 rows of a CIFAR-scale anchor: 1018 columns; 1 GiB, smoke: 10 MiB) it
times four groups, NumPy's peer the baseline of each, every peer reading the cache 4 times per round
(smoke: once), the page cache warm (an untimed round first):
1. first pass: the files opened inside the round; the native reader with and without checksum
   verification;
2. sequential: files already open (and, for the native reader, verified): memmap slice + copy
   against the native reader (target ≥ 0.8x);
3. shuffled: batches of chunks of 256 rows in a seeded order: NumPy fancy indexing of the same
   sample order against the native reader (target ≥ 1x);
4. read + compute: a fixed single-threaded matmul per batch, sized so that computing alone takes
   about as long as one NumPy read (the baseline here); NumPy's read and compute add up, the native
   reader's read-ahead should hide its reading (target: ≥ 0.83x of computing alone, i.e. within
   1.2x of max(read, compute)).
Batches of 1024 rows; one torch thread (the other core is the read-ahead thread's).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from common import best_seconds, run_peer

from klas.cache import BlockEntry, CacheReader, CacheWriter, read_manifest, row_ranges
from klas.cache.format import HEADER_BYTES
from klas.extraction.extract import DEFAULT_SHARD_ROWS

WIDTH = 1008 + 10  # pooled blocks of ResNet-56 (9x16 + 9x32 + 9x64) + 10 logits
BATCH = 1024


def build_cache(path: Path, rows: int, shard_rows: int) -> None:
    """Random fp16 rows (seed 0): the same bytes whatever the shard size; kept between runs."""
    if (path / "manifest.json").exists():
        m = read_manifest(path)
        if m.num_samples == rows and m.shards[0].rows == min(rows, shard_rows):
            return
    blocks = (BlockEntry("blocks", 1, WIDTH - 10, 0), BlockEntry("logits", 0, 10, WIDTH - 10, kind="logits"))
    w = CacheWriter(path, anchor="bench:synthetic", split="val", dtype="float16", blocks=blocks, num_classes=10,
                    num_samples=rows, shard_rows=shard_rows, source={"bench": True})
    rng = np.random.default_rng(0)
    for start in range(0, rows, 65536):
        n = min(65536, rows - start)
        w.append(rng.standard_normal((n, WIDTH), dtype=np.float32).astype(np.float16), rng.integers(0, 10, n))
    w.finish()


class Workload:
    """One cache in two layouts (NumPy: one shard; native: the shards extraction writes) and the
    loops every peer runs over it."""

    def __init__(self, root: Path, gib: float, passes: int):
        self.rows = int(gib * 2**30) // (WIDTH * 2)
        self.passes = passes
        self.flat, self.sharded = root / "one-shard", root / "sharded"
        build_cache(self.flat, self.rows, self.rows)
        build_cache(self.sharded, self.rows, DEFAULT_SHARD_ROWS)
        self.shard = self.flat / read_manifest(self.flat).shards[0].file
        self.mm = self.open_memmap()
        self.kept = CacheReader(self.sharded, backend="native", verify=True)
        ranges = row_ranges(self.rows, shuffle=True, seed=0, chunk_rows=256)
        self.order = np.concatenate([np.arange(s, s + c) for s, c in ranges])
        self.sample = torch.from_numpy(np.array(self.mm[:BATCH]))
        self.a = torch.randn(16, 16)

    @property
    def nbytes(self) -> int:
        return self.rows * WIDTH * 2

    def open_memmap(self):
        return np.memmap(self.shard, dtype=np.float16, mode="r", offset=HEADER_BYTES, shape=(self.rows, WIDTH))

    # every loop returns the number of rows it read
    def numpy_sequential(self, mm) -> int:
        return sum(len(np.array(mm[s:s + BATCH])) for s in range(0, self.rows, BATCH))

    def native_sequential(self, reader) -> int:
        return sum(len(b.features) for b in reader.batches(BATCH))

    def numpy_shuffled(self, mm) -> int:
        return sum(len(mm[self.order[s:s + BATCH]]) for s in range(0, self.rows, BATCH))

    def native_shuffled(self, reader) -> int:
        return sum(len(b.features) for b in reader.batches(BATCH, shuffle=True, seed=0, chunk_rows=256))

    def compute(self, batch: torch.Tensor):
        """Fixed work per batch: one square matmul (releases the GIL), after touching the batch."""
        batch[0, 0].item()
        return torch.mm(self.a, self.a)

    def pure_compute(self) -> int:
        for _ in range(0, self.rows, BATCH):
            self.compute(self.sample)
        return self.rows

    def numpy_with_compute(self, mm) -> int:
        rows = 0
        for s in range(0, self.rows, BATCH):
            batch = np.array(mm[s:s + BATCH])
            self.compute(torch.from_numpy(batch))
            rows += len(batch)
        return rows

    def native_with_compute(self, reader) -> int:
        rows = 0
        for b in reader.batches(BATCH):
            self.compute(torch.from_numpy(b.features))
            rows += len(b.features)
        return rows

    def calibrate(self) -> int:
        """Sizes the matmul so that computing alone takes about one pure NumPy read; its side."""
        read_time = best_seconds(lambda: self.numpy_sequential(self.mm))
        self.pure_compute()  # warm-up, so the first size is not judged by a cold start
        for side in range(16, 1025, 8):
            self.a = torch.randn(side, side)
            if best_seconds(self.pure_compute) >= read_time:
                break
        return self.a.shape[0]

    def peers(self) -> dict:
        """(group, peer) -> one pass over the cache (returns the rows read)."""
        fresh = lambda verify: CacheReader(self.sharded, backend="native", verify=verify)
        return {
            (FIRST, "numpy memmap (slice + copy)"): lambda: self.numpy_sequential(self.open_memmap()),
            (FIRST, "native, checksums verified"): lambda: self.native_sequential(fresh(True)),
            (FIRST, "native, no verification"): lambda: self.native_sequential(fresh(False)),
            (SEQUENTIAL, "numpy memmap (slice + copy)"): lambda: self.numpy_sequential(self.mm),
            (SEQUENTIAL, "native"): lambda: self.native_sequential(self.kept),
            (SHUFFLED, "numpy memmap (fancy indexing)"): lambda: self.numpy_shuffled(self.mm),
            (SHUFFLED, "native, chunks of 256"): lambda: self.native_shuffled(self.kept),
            (COMPUTE, "pure compute"): self.pure_compute,
            (COMPUTE, "numpy memmap + compute"): lambda: self.numpy_with_compute(self.mm),
            (COMPUTE, "native + compute"): lambda: self.native_with_compute(self.kept),
        }


FIRST, SEQUENTIAL, SHUFFLED, COMPUTE = "reader first pass", "reader sequential", "reader shuffled", "reader + compute"
BASELINES = {FIRST: "numpy memmap (slice + copy)", SEQUENTIAL: "numpy memmap (slice + copy)",
             SHUFFLED: "numpy memmap (fancy indexing)", COMPUTE: "pure compute"}
PEERS = [(FIRST, "numpy memmap (slice + copy)"), (FIRST, "native, checksums verified"),
         (FIRST, "native, no verification"), (SEQUENTIAL, "numpy memmap (slice + copy)"), (SEQUENTIAL, "native"),
         (SHUFFLED, "numpy memmap (fancy indexing)"), (SHUFFLED, "native, chunks of 256"), (COMPUTE, "pure compute"),
         (COMPUTE, "numpy memmap + compute"), (COMPUTE, "native + compute")]


@pytest.fixture(scope="module")
def workload(request, smoke):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core computes, the other is free for the read-ahead thread
    root = Path(request.config.getoption("--bench-dir")) / ("smoke" if smoke else "full")
    work = Workload(root, 10 / 1024 if smoke else 1.0, 1 if smoke else 4)
    work.side = work.calibrate()
    yield work
    torch.set_num_threads(threads)


IDS = ["open-numpy", "open-native-verified", "open-native", "seq-numpy", "seq-native", "shuffled-numpy",
       "shuffled-native", "compute-alone", "compute-numpy", "compute-native"]


@pytest.mark.parametrize("group, peer", PEERS, ids=IDS)
def test_reader(benchmark, workload, group, peer, smoke):
    one_pass = workload.peers()[group, peer]

    def passes() -> int:
        return sum(one_pass() for _ in range(workload.passes))

    reads = peer != "pure compute"
    rows = run_peer(benchmark, passes, group=group, peer=peer, baseline=BASELINES[group], rounds=1 if smoke else 5,
                    passes=workload.passes, rows=workload.rows, batch=BATCH, matmul_side=workload.side,
                    **({"work": workload.passes * workload.nbytes / 1e9, "work_unit": "GB"} if reads else {}))
    assert rows == workload.passes * workload.rows, f"{peer} read {rows} rows, not {workload.passes * workload.rows}"
