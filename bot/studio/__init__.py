"""The studio: a local web page for personas, faces, expressions and channels, served by the bot's own
process (aiohttp) and built, like the other front-ends, on the engine's public methods only.

Modules: `guard` (the access token, Host and Origin checks, response headers), `api` (the JSON and image
routes), `jobs` (renders started from the page and their progress), `server` (the app, start and stop);
`page/` holds the page itself (HTML, CSS, JavaScript; no build step).
"""

from bot.studio.server import Studio

__all__ = ["Studio"]
