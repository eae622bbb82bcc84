"""CLI command modules: each has ``add_arguments(parser)`` and ``run(args) -> int``."""
