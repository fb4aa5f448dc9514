"""The FAISS backend: a collection on local disk, published as immutable generations."""
