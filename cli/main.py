"""`gptoss`: the command-line entry point. Commands only parse, call a package, and print."""

from __future__ import annotations

import click

from . import bench, chat, checkpoints, doctor, generate, serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gptoss-metal")
def cli() -> None:
    """gpt-oss on Apple Silicon: convert once, then chat offline."""


checkpoints.register(cli)
generate.register(cli)
chat.register(cli)
serve.register(cli)
doctor.register(cli)
bench.register(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
