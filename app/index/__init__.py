"""Where documents are stored and searched: the index protocols, their backends (FAISS on disk,
Qdrant), the fallback wrapper, and the set of collections a process has open."""
