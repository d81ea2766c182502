"""The typed IR: plain frozen dataclasses (nodes.py), dims and types (types.py), the op table."""
