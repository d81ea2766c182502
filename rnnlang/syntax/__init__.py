"""Front end: grammar loading and parse tree -> AST dataclasses with source spans."""
