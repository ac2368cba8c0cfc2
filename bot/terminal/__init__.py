"""The terminal front-end: the chat (console.py) and faces drawn in the terminal (faces.py)."""
