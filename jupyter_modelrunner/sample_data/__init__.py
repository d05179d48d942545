"""Small datasets shipped with the package, for the example notebooks and a first `map`: no download needed.

`reviews.csv` holds forty short product reviews written for this package (positive, negative and mixed ones, ten
products), the kind of column a notebook labels with a local model.
"""

from __future__ import annotations

import csv
from importlib.resources import files
from typing import Any


def reviews() -> Any:
    """The product reviews (`id`, `product`, `text`): a pandas DataFrame when pandas is installed, else a list of
    dicts (one per row)."""
    with files(__package__).joinpath("reviews.csv").open(encoding="utf-8", newline="") as handle:
        rows = [{**row, "id": int(row["id"])} for row in csv.DictReader(handle)]
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows)
