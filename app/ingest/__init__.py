"""Documents in: input readers, chunking, and the one indexing core every writer goes through."""
