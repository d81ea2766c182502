"""IR -> readable Python source -> Numba. One emitter per target; shared writer and printer."""
