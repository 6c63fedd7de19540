"""The MLflow pyfunc face of a registered offramp model, logged as code by `pipelines/registry.py`
(MLflow's models-from-code: this file is stored with the model and run when it loads).

    model = mlflow.pyfunc.load_model("models:/sections@champion")
    model.predict(["a text", "another"])   # or a DataFrame with a `text` column

Each text gets what the endpoint and a tagging run give it (label, confidence, exit_layer,
status, num_tokens; token models: words, tags, tag layers): the same plan and steps
(`pipelines.serve.serving_plan`, `offramp.serving.tagger.OnlineTagger`), run here in-process.
"""

from __future__ import annotations

import mlflow
import pandas as pd

from offramp.config import ServeConfig
from offramp.serving.tagger import TEXT, OnlineTagger
from pipelines.serve import serving_plan

ROWS_PER_PASS = 64  # texts per forward pass, as a tagging run's default batch


def texts_of(model_input) -> list[str]:
    """A list of texts from a list, a Series, or a DataFrame's `text` column (or its only column)."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT not in model_input.columns and len(model_input.columns) != 1:
            raise ValueError(f"a DataFrame of texts needs a {TEXT!r} column; columns are {list(model_input.columns)}")
        model_input = model_input[TEXT] if TEXT in model_input.columns else model_input.iloc[:, 0]
    return [str(t) for t in list(model_input)]


class OfframpModel(mlflow.pyfunc.PythonModel):
    """Texts in, one row of answers per text out, with the model's stored exit policy and thresholds."""

    def load_context(self, context):
        max_length = int((context.model_config or {}).get("max_length", 128))
        # the batching settings are the endpoint's and unused here; they need only be consistent
        cfg = ServeConfig(model=context.artifacts["model"], max_length=max_length,
                          max_batch_tokens=ROWS_PER_PASS * max_length)
        self.tagger = OnlineTagger(serving_plan(cfg))

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        texts = texts_of(model_input)
        answers = []
        for i in range(0, len(texts), ROWS_PER_PASS):
            rows = self.tagger.tokenize(texts[i:i + ROWS_PER_PASS])
            answers += self.tagger.run(rows)[0]
        return pd.DataFrame(answers)


mlflow.models.set_model(OfframpModel())
