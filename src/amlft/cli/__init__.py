"""Command line interface. Each command group lives in its own module, imported lazily."""
