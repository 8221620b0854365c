"""`adtk defects`: write DefectMaker examples (image + mask per class) so a user can see what REB's
fine-tuning trains on.

    OUT/<nn>_<k>_<class>.png        the variant (k = class id, 0 = the augmented original)
    OUT/<nn>_<k>_<class>_mask.png   its blend weight as 8-bit grey (white = defect pixel fully replaced)
    OUT/sheet.png                   all of them in one grid: one row per source image, one column per class
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np


@click.command("defects")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="MVTec-style folder (train/good, ...) or a plain folder of good images.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write the examples to.")
@click.option("-n", "num_sources", type=int, default=4, show_default=True,
              help="Number of source images; each gives one example of every class (7 images).")
@click.option("--size", "image_size_px", type=int, default=256, show_default=True,
              help="Images are resized to this square size first, as the fine-tuning does.")
@click.option("--seed", type=int, default=0, show_default=True)
def command(data, out, num_sources, image_size_px, seed):
    """Write DefectMaker examples (the 7 classes of REB's proxy task) from DATA's training images."""
    from PIL import Image

    from adtk.runtime.errors import ConfigError
    from adtk.toolkit.data import index_dataset, iter_images
    from adtk.toolkit.defectmaker import CLASS_NAMES, DefectMaker
    from adtk.toolkit.methods.reb import frames_at_model_size

    if num_sources < 1:
        raise ConfigError(f"-n must be at least 1, got {num_sources}")
    index = index_dataset(data)
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(index.train), min(num_sources, len(index.train)), replace=False).tolist())
    frames = frames_at_model_size((image for _, image in iter_images([index.train[i] for i in picks])),
                                  (image_size_px, image_size_px))
    maker = DefectMaker(seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for number in range(len(frames)):
        row = []
        for sample in maker.make_variants(number, frames):
            stem = out / f"{number:02d}_{sample.label}_{CLASS_NAMES[sample.label]}"
            mask = (sample.mask * 255).round().astype(np.uint8)
            Image.fromarray(sample.image).save(f"{stem}.png")
            Image.fromarray(mask).save(f"{stem}_mask.png")
            row.append(np.concatenate([sample.image, np.repeat(mask[..., None], 3, axis=2)], axis=0))
        rows.append(np.concatenate(row, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out / "sheet.png")
    click.echo(f"wrote {len(frames) * len(CLASS_NAMES)} examples and masks of {len(CLASS_NAMES)} classes "
               f"({', '.join(CLASS_NAMES)}) to {out}; overview: {out / 'sheet.png'}")
