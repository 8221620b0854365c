"""Polluted training sets, built the way each paper builds them (spec A6 and B6), never mixed.

* ``sroc`` (seed 000, leak-free): draw a pollution pool of round(max(0.2, rate) * N) defective test
  images, stratified by defect type (largest-remainder allocation [ours]); remove the pool from the
  test set (so the test set is the same for every rate of a seed); swap round(rate * N) randomly
  chosen good training images for as many images of the pool (N stays fixed). The draws are nested:
  the images injected at 10% are among those injected at 20% for the same seed.
* ``paire`` (seed 001, LEAKY): draw round(rate * N) defective test images at random and swap them in
  the same way, but leave the test set unchanged: the injected images are also scored as test images
  (spec P-B1). Its numbers are labelled ``paire_leaky`` and must not share a table with ``sroc``.
  rate * N larger than the available defects is refused (the paper's rotation/flip augmentation,
  P-B9, is not implemented).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adtk.runtime.errors import ConfigError, DataError

PROTOCOLS = {"sroc": "sroc_disjoint", "paire": "paire_leaky"}
SROC_POOL_FRACTION = 0.2


@dataclass(frozen=True)
class PollutedSplit:
    protocol: str  # "sroc_disjoint" or "paire_leaky"
    rate: float
    seed: int
    train: tuple  # Samples: the polluted training set (len = original N)
    test: tuple  # Samples: the evaluation set
    injected: tuple  # Samples: the defective images placed in train
    removed_good: tuple  # Samples: the good training images they replaced

    @property
    def leaky(self) -> bool:
        return self.protocol == "paire_leaky"


def stratified_draw(types: list[str], count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `count` items drawn without replacement so that each type keeps its share."""
    names, inverse = np.unique(np.asarray(types), return_inverse=True)
    sizes = np.bincount(inverse)
    quota = sizes * count / sizes.sum()
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: count - take.sum()]:
        take[i] += 1
    picks = [rng.choice(np.flatnonzero(inverse == t), size=take[t], replace=False) for t in range(len(names))]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def pollute(train, test, rate: float, protocol: str, seed: int) -> PollutedSplit:
    """train: good training Samples; test: test Samples (label 1 = defective) -> PollutedSplit."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"--pollution {rate}: expected a fraction in [0, 1), e.g. 0.1 for 10%")
    train, test = list(train), list(test)
    defects = [s for s in test if s.label == 1]
    num_train = len(train)
    num_injected = int(round(rate * num_train))
    rng = np.random.default_rng(seed)
    if protocol == "sroc":
        pool_size = int(round(max(SROC_POOL_FRACTION, rate) * num_train))
        if pool_size > len(defects):
            raise DataError(f"the sroc protocol needs {pool_size} defective test images for its pollution pool "
                            f"({max(SROC_POOL_FRACTION, rate):.0%} of {num_train}), but the test set has "
                            f"{len(defects)}; lower --pollution")
        pool = stratified_draw([s.defect_type for s in defects], pool_size, rng)
        pool_order = rng.permutation(pool)  # nested draws: rate 0.1 injects a prefix of rate 0.2's list
        injected = [defects[i] for i in pool_order[:num_injected]]
        in_pool = {defects[i].path for i in pool}
        evaluation = [s for s in test if s.path not in in_pool]
    else:
        if num_injected > len(defects):
            raise DataError(f"the paire protocol needs {num_injected} defective test images, the test set has "
                            f"{len(defects)} (rotation/flip augmentation is not implemented); lower --pollution")
        injected = [defects[i] for i in rng.permutation(len(defects))[:num_injected]]
        evaluation = test
    removed = rng.permutation(num_train)[:num_injected]
    removed_set = set(removed.tolist())
    polluted = [s for i, s in enumerate(train) if i not in removed_set] + injected
    return PollutedSplit(PROTOCOLS[protocol], float(rate), int(seed), tuple(polluted), tuple(evaluation),
                         tuple(injected), tuple(train[i] for i in np.sort(removed)))


def refinement_quality(dropped_paths, injected_paths) -> dict:
    """Precision / recall / F1 of the dropped images against the injected ones (spec A4 metrics)."""
    dropped, injected = set(map(str, dropped_paths)), set(map(str, injected_paths))
    hits = len(dropped & injected)
    precision = hits / len(dropped) if dropped else None
    recall = hits / len(injected) if injected else None
    f1 = 2 * hits / (len(dropped) + len(injected)) if dropped or injected else None
    return {"dropped": len(dropped), "injected": len(injected), "injected_dropped": hits,
            "precision": precision, "recall": recall, "f1": f1}
