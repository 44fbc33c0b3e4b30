"""The MLflow pyfunc model (logged as "models from code": no pickle). It wraps the same
`SegmentationChain` artifact the endpoint serves: raw rows of the chain's request columns in
(numbers, and raw text for categorical columns, encoded by the chain as the endpoint does),
SageMaker k-means style ``closest_cluster`` / ``distance_to_cluster`` out (and
``membership_probability`` for a Gaussian-mixture model). Values whose category level the model
never saw are answered (no indicator set) and logged with counts."""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

try:  # inside a logged model, chain.py travels in the model's code/ directory
    from chain import ChainInputError, SegmentationChain
except ImportError:  # pragma: no cover - in the project itself
    from tasks.chain import ChainInputError, SegmentationChain

logger = logging.getLogger(__name__)


class SegmentationModel(PythonModel):
    def load_context(self, context) -> None:
        self.chain = SegmentationChain.load(context.artifacts["chain"])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            rows = self._encode(model_input)
        else:
            rows = np.asarray(model_input, dtype=np.float64)
        segments, distances, probabilities = self.chain.predict_membership(rows)
        output = pd.DataFrame({"closest_cluster": segments, "distance_to_cluster": distances})
        if probabilities is not None:  # a Gaussian mixture: the posterior of closest_cluster
            output["membership_probability"] = probabilities
        return output

    def _encode(self, frame: pd.DataFrame) -> np.ndarray:
        """A frame of request columns -> feature rows, by the chain's own encoding."""
        chain = self.chain
        names = chain.input_columns
        legacy = [str(c) for c in frame.columns if chain.legacy_indicator(str(c))]
        if legacy:
            raise ValueError(chain.unknown_columns_message(legacy))
        missing = [name for name in names if name not in frame.columns]
        if missing:
            raise ValueError(f"missing feature column(s): {', '.join(missing)}")
        columns = {}
        for name in names:
            column = frame[name]
            if chain.is_categorical(name):
                columns[name] = column.astype("object").where(column.notna(), None).tolist()
            else:
                try:
                    columns[name] = column.to_numpy(dtype=np.float64, na_value=np.nan)
                except (TypeError, ValueError):
                    raise ChainInputError(f"feature {name!r} is not numeric") from None
        encoded = chain.encode_columns(columns, len(frame))
        if encoded.unseen:
            logger.warning(
                "category level(s) the model never saw (no indicator set): %s",
                encoded.unseen_counts(),
            )
        return encoded.values


mlflow.models.set_model(SegmentationModel())
