"""Placeholder entry point, replaced by the full CLI."""


def main() -> int:
    return 0
