"""The command line (`./run …`, `python -m bot …`): one parser, each command's work in its own module."""
