"""The datasets shipped with the package: they load offline, from the installed package, in both shapes."""

from __future__ import annotations

import builtins

from jupyter_modelrunner import sample_data


def test_reviews_load_as_a_dataframe_of_forty_rows():
    frame = sample_data.reviews()
    assert list(frame.columns) == ["id", "product", "text"]
    assert len(frame) == 40 and frame["id"].tolist() == list(range(1, 41))
    assert frame["text"].str.len().min() > 20  # every row has a review to label


def test_reviews_load_as_rows_without_pandas(monkeypatch):
    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("no pandas here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    rows = sample_data.reviews()
    assert rows[0] == {"id": 1, "product": "kettle", "text": rows[0]["text"]} and len(rows) == 40
