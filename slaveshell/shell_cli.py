"""`slaveshell.shell_cli`: a console script's target; the code is slaveshell.client.shell_cli."""

from slaveshell.client.shell_cli import main

__all__ = ["main"]

if __name__ == "__main__":
    import sys

    sys.exit(main())
