"""The top room: the `gpt1` command (cli.py) and the demo with its built-in data (demo.py, world.py)."""
