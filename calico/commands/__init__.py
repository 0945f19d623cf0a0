"""One module per subcommand group. Heavy imports (torch, numba, devkit) happen inside the commands."""
