"""Allow ``python -m nixlog`` (the same front as the console script: see ``entry.py``)."""

from nixlog.entry import main

if __name__ == "__main__":
    main()
