"""semsearch core library: models, indexes, cache, pipeline and indexing. No web framework here."""

__version__ = "0.1.0"
