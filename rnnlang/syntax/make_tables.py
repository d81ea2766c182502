"""Rewrite `_lalr_tables.py` after a grammar change:
``PYTHONHASHSEED=0 python -m rnnlang.syntax.make_tables`` (Lark numbers its LALR states in set
order, so a fixed hash seed keeps the file's diff small)."""

from __future__ import annotations

from rnnlang.syntax.parse import _TABLES, tables_source

if __name__ == "__main__":
    _TABLES.write_text(tables_source())
    print(f"wrote {_TABLES}")
