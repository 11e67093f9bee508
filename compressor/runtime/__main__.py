"""`python -m compressor.runtime encode|decode ...`: the torch-free command line."""

from compressor.runtime.cli import main

if __name__ == "__main__":
    main()
