"""Raw interaction logs to timelines: readers, fetch, timelines, the DataModule."""
