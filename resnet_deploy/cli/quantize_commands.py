"""Commands of the quantize stage (filled in by that stage)."""

COMMANDS: list = []
