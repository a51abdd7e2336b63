"""The notebooks' studies and their verdicts (01-03, 06): the top room, which may import every other room."""
