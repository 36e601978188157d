"""HTTP layer: the aiohttp app, its middleware, and the route handlers."""
