"""The ``bess-edge`` command: one module per subcommand, as cantools does it."""
