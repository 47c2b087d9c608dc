"""`python -m dreamshard` runs the command-line interface."""

from dreamshard.cli import app

app()
