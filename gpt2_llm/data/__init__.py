"""Training text: a corpus of files, its tokens cached in memory-mapped shards, and the train/val windows."""
