"""Commands of the bench stage (filled in by that stage)."""

COMMANDS: list = []
