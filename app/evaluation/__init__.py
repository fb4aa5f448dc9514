"""Retrieval quality: BEIR datasets and their metrics (beir.py), and `semsearch eval`'s run of
the real search path (search.py)."""
