"""Subcommands beyond the core ones in cli.py. Each module here defines
`add_commands(sub: argparse._SubParsersAction) -> None`, which adds its parsers and sets
`func` on each; cli.py finds the modules by walking this package. Keep module imports light:
heavy imports belong inside the command functions."""
