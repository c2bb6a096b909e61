"""`python -m sqlinfer` is the `sqlinfer` command."""

from sqlinfer.cli import main

main()
