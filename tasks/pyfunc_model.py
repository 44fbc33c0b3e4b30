"""The MLflow pyfunc model (logged as "models from code": no pickle). It wraps the same
`SegmentationChain` artifact the endpoint serves: raw feature rows in, SageMaker k-means
style ``closest_cluster`` / ``distance_to_cluster`` out (and ``membership_probability`` for a
Gaussian-mixture model)."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

try:  # inside a logged model, chain.py travels in the model's code/ directory
    from chain import SegmentationChain
except ImportError:  # pragma: no cover - in the project itself
    from tasks.chain import SegmentationChain


class SegmentationModel(PythonModel):
    def load_context(self, context) -> None:
        self.chain = SegmentationChain.load(context.artifacts["chain"])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            missing = [name for name in self.chain.feature_names if name not in model_input.columns]
            if missing:
                raise ValueError(f"missing feature column(s): {', '.join(missing)}")
            rows = model_input[self.chain.feature_names].to_numpy(dtype=np.float64)
        else:
            rows = np.asarray(model_input, dtype=np.float64)
        segments, distances, probabilities = self.chain.predict_membership(rows)
        output = pd.DataFrame({"closest_cluster": segments, "distance_to_cluster": distances})
        if probabilities is not None:  # a Gaussian mixture: the posterior of closest_cluster
            output["membership_probability"] = probabilities
        return output


mlflow.models.set_model(SegmentationModel())
