"""The search path: query checks, the pipeline, ranking, and the cache of answers."""
