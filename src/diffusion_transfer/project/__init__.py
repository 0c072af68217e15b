"""The Kedro glue: the config loader, the datasets and sources declared in
configuration, the parameter schema and the run resolved from it once, the
hooks and pre-run checks, and the pipeline registry. ``core`` knows nothing
of it; ``pipelines`` use only its schema."""
