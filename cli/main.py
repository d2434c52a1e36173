"""Placeholder; replaced by the CLI."""


def main() -> None:
    print("flowctl")
