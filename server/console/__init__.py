"""The web console (docs/console.md): `create_app` in app.py."""

from settlesim.server.console.app import ConsoleConfig, create_app

__all__ = ["ConsoleConfig", "create_app"]
