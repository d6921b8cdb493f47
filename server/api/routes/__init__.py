"""One router per resource, gathered by `server.app.create_app`."""
