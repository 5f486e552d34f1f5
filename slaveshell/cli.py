"""`slaveshell.cli`: a console script's target; the code is slaveshell.client.cli."""

from slaveshell.client.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    import sys

    sys.exit(main())
