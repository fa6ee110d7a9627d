"""The commands of the ``madmark`` CLI; each module has ``main(args: list[str]) -> int``."""
