"""`python flows.py COMMAND ...` is `diffmix COMMAND ...`: the flows live in diffmix/flows.py."""

from diffmix.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
