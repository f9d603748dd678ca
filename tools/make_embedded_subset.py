"""Build the Fashion-MNIST subset embedded in dsco-hub (the default source of `dsco-hub concentrate`).

    python tools/make_embedded_subset.py ../shared/data/fashion_mnist dsco_hub/resources/fashion_mnist_subset

Takes the first 500 training and the first 100 test images of each class, in the original order, and
writes them as a `datasets` repo folder (parquet with embedded PNG bytes, README card, MIT licence).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import datasets
import numpy as np
from huggingface_hub import DatasetCard, DatasetCardData

PER_CLASS = {"train": 500, "test": 100}

BODY = """
# Fashion-MNIST subset (embedded in dsco-hub)

The first {train} training and first {test} test images of each of the 10 Fashion-MNIST classes
({n_train} / {n_test} images, 28x28 grayscale), in the original order. dsco-hub ships it so that
`dsco-hub concentrate` runs with no download. Built by `tools/make_embedded_subset.py`.

License: MIT (Expat), Copyright (c) 2017 Zalando SE; see LICENSE.

```bibtex
@article{{xiao2017fashion,
  title   = {{Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms}},
  author  = {{Xiao, Han and Rasul, Kashif and Vollgraf, Roland}},
  journal = {{arXiv preprint arXiv:1708.07747}},
  year    = {{2017}}
}}
```
"""


def main(src: str, dst: str) -> None:
    out = Path(dst)
    shutil.rmtree(out, ignore_errors=True)
    (out / "data").mkdir(parents=True)
    full = datasets.load_dataset(src)
    sizes = {}
    for split, per_class in PER_CLASS.items():
        ds = full[split]
        labels = np.asarray(ds.with_format("numpy", columns=["label"])["label"])
        keep = np.sort(np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(10)]))
        sub = ds.select(keep)
        sub.to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
        sizes[split] = len(sub)
    shutil.copy(Path(src) / "LICENSE", out / "LICENSE")
    card_data = DatasetCardData(
        license="mit",
        task_categories=["image-classification"],
        pretty_name="Fashion-MNIST subset",
        source_datasets=["fashion_mnist"],
    )
    card_data["configs"] = [
        {
            "config_name": "default",
            "data_files": [{"split": "train", "path": "data/train-*"}, {"split": "test", "path": "data/test-*"}],
        }
    ]
    text = BODY.format(train=PER_CLASS["train"], test=PER_CLASS["test"], n_train=sizes["train"], n_test=sizes["test"])
    DatasetCard(f"---\n{card_data.to_yaml()}\n---\n{text}").save(out / "README.md")


if __name__ == "__main__":
    main(*sys.argv[1:3])
