"""The Discord front-end: the client (client.py), one cog per feature (cogs/), how a reply looks and its
persistent controls (replies.py), posting as a character through webhooks (webhooks.py), and splitting
long replies (splitting.py). It uses only the engine's public parts."""
