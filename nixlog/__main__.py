"""Allow ``python -m nixlog``."""

from nixlog.cli import main

if __name__ == "__main__":
    main()
