"""The Ray layer: read, the one tagging plan, MLflow tracking, the report and the commands.

The library face for teams composing their own Ray Data pipelines:

    from pipelines import tag_dataset
    labeled = tag_dataset(ds, "models/sections", TagConfig(text_column="body", id_column="doc_id"))
"""

__all__ = ["TagResult", "run_tagging", "tag_dataset"]


def __getattr__(name: str):
    """The library face is imported on first use: a Ray worker that unpickles a light piece of
    this package (the corpus reader) must not import torch and transformers with it (5.8 s and
    about 300 MiB per worker, kept for the worker's life; BENCHMARKS.md, "Scale")."""
    if name in __all__:
        from pipelines import run

        return getattr(run, name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
