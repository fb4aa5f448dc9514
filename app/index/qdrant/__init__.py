"""The Qdrant backend: one Qdrant collection per semsearch collection, generations in the points."""
