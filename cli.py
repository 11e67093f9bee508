"""Entry point: `uv run cli.py --help`."""

from compressor.cli import main

if __name__ == "__main__":
    main()
