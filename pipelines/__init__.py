"""The Ray layer: read, the one tagging plan, MLflow tracking, the report and the commands.

The library face for teams composing their own Ray Data pipelines:

    from pipelines import tag_dataset
    labeled = tag_dataset(ds, "models/sections", TagConfig(text_column="body", id_column="doc_id"))
"""

from pipelines.run import TagResult, run_tagging, tag_dataset

__all__ = ["TagResult", "run_tagging", "tag_dataset"]
