"""discord.py cogs: one per feature, each with `async def setup(bot)`."""
