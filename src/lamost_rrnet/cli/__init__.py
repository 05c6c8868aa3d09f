"""The ``lamost-rrnet`` command line: one small module per subcommand on one Typer app."""
