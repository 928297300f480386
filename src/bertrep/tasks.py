"""`python -m bertrep.tasks --data_dir DIR` (`bertrep tasks`): check a data folder, every
task's splits, their sizes and chance scores. The task specs and loaders are
`bertrep.data.tasks`."""

from bertrep.data.tasks import main

if __name__ == "__main__":
    main()
