"""Training-set refinement: drop the training images a detector finds anomalous before the final fit.

    --refine sroc:R            SROC (spec A4, seed 000): fit the build's own detector on all training
                               images, score them in-sample, drop the round(R * N) highest, refit.
    --refine sroc:R:DETECTOR   the same, with DETECTOR refining (e.g. sroc:0.2:mahalanobis, Appendix B).
    --refine paire             PaIRE's iterative trimming (spec B4, seed 001): keep D_clean.
    --refine auto[:DETECTOR]   no R: the contamination is estimated from the refiner's scores (contamination.py);
                               without DETECTOR a Gaussian refines (the build's method if Gaussian, else
                               refine.AUTO_REFINER = PaDiM), ranked by the rank sum of its in-sample scores
                               and per-position LOF scores (rank_sum.py), its estimated count dropped, and
                               the build's method is fitted on what it kept. auto:DETECTOR: that detector's
                               scores alone.

The refiner scores through its method's exported head in torch, exactly as the artefact would.
"""

from adtk.toolkit.refinement.refine import (RefinementResult, RefineSpec, manifest_entry, parse_refine, refine,
                                            refine_training_set, training_list_path, write_training_list)

__all__ = ["RefineSpec", "RefinementResult", "manifest_entry", "parse_refine", "refine", "refine_training_set",
           "training_list_path", "write_training_list"]
