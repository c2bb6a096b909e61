"""The usual Spark recipes for model inference, written as their authors publish them.

- ``naive``: the widely copied blog recipe (Databricks' "model inference using PyTorch" notebook):
  a scalar pandas UDF that, on every call, rebuilds the network from a broadcast state_dict and
  runs a ``DataLoader(batch_size=500, num_workers=8)`` over the batch of rows.
- ``predict_batch_udf``: Spark's own ``pyspark.ml.functions.predict_batch_udf``, whose
  ``make_predict_fn`` result is cached per Python worker, at a given batch size.

Both count the networks they build in an accumulator, as sqlinfer does, so the report can show
how often each rebuilds.
"""

from __future__ import annotations

from typing import Any

import pandas as pd  # at module level: PySpark resolves the UDF's `pd.Series` type hints here
from pyspark.sql import SparkSession
from pyspark.sql.types import ArrayType, FloatType


def naive(spark: SparkSession, architecture: str, state: dict, size: int) -> tuple[Any, Any]:
    """(pandas UDF, build counter)."""
    from pyspark.sql.functions import pandas_udf

    sc = spark.sparkContext
    state_bc = sc.broadcast(state)
    builds = sc.accumulator(0)

    @pandas_udf(ArrayType(FloatType()))
    def predict(contents: pd.Series) -> pd.Series:
        import torch
        from torch.utils.data import DataLoader

        from bench import plain

        model = plain.network(architecture, state_bc.value)
        builds.add(1)
        loader = DataLoader(plain.BytesDataset(list(contents), size), batch_size=500, num_workers=8)
        predictions = []
        with torch.no_grad():
            for batch in loader:
                predictions.extend(model(batch).numpy())
        return pd.Series(predictions)

    return predict, builds


def predict_batch(spark: SparkSession, architecture: str, state: dict, size: int, batch_size: int) -> tuple[Any, Any]:
    """(predict_batch_udf, build counter)."""
    from pyspark.ml.functions import predict_batch_udf

    sc = spark.sparkContext
    state_bc = sc.broadcast(state)
    builds = sc.accumulator(0)

    def make_predict_fn():
        import io

        import numpy as np
        import torch
        from PIL import Image

        from bench import plain

        model = plain.network(architecture, state_bc.value)
        builds.add(1)
        pipeline = plain.transform(size)

        def predict(contents: np.ndarray) -> np.ndarray:
            batch = torch.stack([pipeline(Image.open(io.BytesIO(c)).convert("RGB")) for c in contents])
            with torch.inference_mode():
                return model(batch).numpy()

        return predict

    udf = predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()), batch_size=batch_size)
    return udf, builds
