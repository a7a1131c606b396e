"""The CLI's subcommands, one module each: ``add(subparsers)`` and a ``run(args)``."""
