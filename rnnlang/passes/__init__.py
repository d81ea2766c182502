"""IR -> IR passes, one per module; `pipeline.py` lists them in order."""
