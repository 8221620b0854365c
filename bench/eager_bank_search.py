"""Issue-17 bench: the eager (torch) bank searches of toolkit/search.py, blocked on both axes, against one whole
[N, M] matrix and against the former 8,192-row bank blocks, side by side in one run.

The eager searches are what the build's torch-side scoring runs (ensemble calibration, the recipe search's
candidate validation, REB's keep-or-revert validation, every torch-reference score). Random queries and bank,
152 dims (PatchCore / LDKNN's embedding), torch's thread count; median of 5 calls each. Prints ms, ratios and
whether the results are identical.

    .venv/bin/python bench/eager_bank_search.py      # 16 frames x 1,024 patches vs 9,800 rows; 1 frame vs 70,144 / 6,850
"""

from __future__ import annotations

import os
import time

import torch

from adtk.toolkit import search

SHAPES = [(16384, 9800), (1024, 70144), (1024, 6850)]  # REB's validation batch; the default bank; auto's pick
FORMER_BANK_BLOCK = 8192  # the eager minimum's blocks before the change


def median_ms(call, repeats: int = 5):
    times, result = [], None
    for _ in range(repeats):
        tic = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - tic)
    return sorted(times)[repeats // 2] * 1e3, result


def former_min(queries, bank_t_neg2, bank_sq_norms):
    nearest = None
    for start in range(0, bank_t_neg2.shape[1], FORMER_BANK_BLOCK):
        stop = start + FORMER_BANK_BLOCK
        block = torch.addmm(bank_sq_norms[start:stop], queries, bank_t_neg2[:, start:stop]).amin(dim=-1)
        nearest = block if nearest is None else torch.minimum(nearest, block)
    return nearest


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    print("| queries x bank rows | min + index: whole / blocked ms | ratio | identical | min: 8,192-row blocks / "
          "blocked ms | ratio | identical |")
    print("|---|---|---|---|---|---|---|")
    for num_queries, rows in SHAPES:
        queries, bank_t_neg2 = torch.randn(num_queries, 152), -2 * torch.randn(152, rows)
        norms = (0.25 * bank_t_neg2 * bank_t_neg2).sum(0)
        whole_ms, whole = median_ms(lambda: search.partial_sq_distances(queries, bank_t_neg2, norms).min(dim=-1))
        blocked_ms, blocked = median_ms(lambda: search.nearest_partial_sq_distances(queries, bank_t_neg2, norms))
        former_ms, former = median_ms(lambda: former_min(queries, bank_t_neg2, norms))
        now_ms, now = median_ms(lambda: search.min_partial_sq_distances(queries, bank_t_neg2, norms))
        same_index = torch.equal(whole.values, blocked[0]) and torch.equal(whole.indices, blocked[1])
        print(f"| {num_queries:,} x {rows:,} | {whole_ms:.0f} / {blocked_ms:.0f} | {blocked_ms / whole_ms:.2f}x | "
              f"{same_index} | {former_ms:.0f} / {now_ms:.0f} | {now_ms / former_ms:.2f}x | {torch.equal(former, now)} |",
              flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
