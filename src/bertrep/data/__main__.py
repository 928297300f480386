"""`python -m bertrep.data DIR` (`bertrep data DIR`): the built-in tasks' data from the
hub into a local folder (bertrep.data.fetch)."""

from bertrep.data.fetch import main

if __name__ == "__main__":
    main()
